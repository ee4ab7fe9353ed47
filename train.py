"""Train a p5x model: `python train.py --help`. With no arguments, a small T5 on the bundled sample.

Also runs under the DeepSpeed launcher:
    deepspeed --master_port 29561 train.py --deepspeed p5x/configs/ds_zero2.json --use-cpu ...
"""

import sys

from p5x.training import main

if __name__ == "__main__":
    sys.exit(main())
