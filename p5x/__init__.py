"""p5x: multitask text-to-text generative recommendation (the P5 family) on T5 or LLaMA backbones."""

__version__ = "0.1.0"
