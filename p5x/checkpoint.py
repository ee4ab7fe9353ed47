"""Self-describing checkpoint directories: weights, tokenizer, id indexes and the run's config.

    model.safetensors   P5XModel state (backbone + word_embed); with LoRA on a pretrained base only
                        the trainable tensors (adapter + word_embed), the base is rebuilt from its files
    added_rows.safetensors  (adapter checkpoints only) the base's embedding rows of the id-piece tokens
                        added to its vocabulary: resizing draws those rows at random, so without them a
                        reload would read other item and user ids
    tokenizer files     tokenizer.json / tokenizer_config.json (id pieces included)
    item_index.json     p5x.indexing.ItemIndex.save; user_index.json likewise
    p5x_config.json     backbone name and config dict, whole-word on/off, max lengths, tasks,
                        indexing, seed, data_hash of the dataset manifest, templates hash, p5x version

safetensors and JSON only: nothing here is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .errors import CheckpointError

CONFIG_FILE = "p5x_config.json"
WEIGHTS_FILE = "model.safetensors"
ADDED_FILE = "added_rows.safetensors"


@dataclass
class Checkpoint:
    model: object        # P5XModel, in eval mode
    tokenizer: object
    featurizer: object   # p5x.features.Featurizer
    index: object        # ItemIndex for items (None if absent)
    user_index: object
    config: dict


def _dedup(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop aliases of tied tensors (safetensors refuses shared memory); loading re-ties them."""
    out, seen = {}, set()
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def save_checkpoint(out_dir, model, tokenizer, config: dict, index=None, user_index=None,
                    state_dict: dict | None = None) -> Path:
    """Write a checkpoint into out_dir (created if needed); every file lands by rename."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "p5x_version": __version__,
              "backbone_config": model.backbone.config.to_dict() if not config.get("peft")
              else model.backbone.get_base_model().config.to_dict()}
    config["adapter_only"] = bool(config.get("peft")) and bool(config.get("pretrained"))
    if state_dict is None:
        state_dict = model.state_dict()
    if config["adapter_only"]:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state_dict = {k: v for k, v in state_dict.items() if k in trainable}
        if not any("lora_" in k for k in state_dict):
            # the failure TALLRec users met: an "adapter" file with no adapter in it
            raise CheckpointError(f"{out_dir}: LoRA run but no adapter tensor to save (nothing trainable "
                                  f"is named lora_*)")
        extra = added_rows(model, tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix=".p5x-ckpt.", dir=out_dir))
    try:
        save_file(_dedup(state_dict), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if config["adapter_only"] and extra:
            save_file(extra, str(tmp / ADDED_FILE), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        if index is not None:
            index.save(tmp / "item_index.json")
        if user_index is not None:
            user_index.save(tmp / "user_index.json")
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _added_ids(tokenizer) -> list[int]:
    from .tokenization import PIECE_RE

    return sorted(i for t, i in tokenizer.get_added_vocab().items() if PIECE_RE.fullmatch(t))


def added_rows(model, tokenizer) -> dict[str, torch.Tensor]:
    """Input (and untied output) embedding rows of the id-piece tokens: frozen under LoRA, yet not
    part of the pretrained files, so an adapter checkpoint must carry them."""
    ids = _added_ids(tokenizer)
    if not ids:
        return {}
    idx = torch.tensor(ids)
    bb = model.backbone
    out = {"ids": idx, "input": bb.get_input_embeddings().weight.detach()[idx].contiguous().clone()}
    head = bb.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != bb.get_input_embeddings().weight.data_ptr():
        out["output"] = head.weight.detach()[idx].contiguous().clone()
    return out


def restore_added_rows(model, path: Path) -> None:
    """Put the saved id-piece rows back into a freshly resized base (no-op when the file is absent)."""
    from safetensors.torch import load_file

    if not path.is_file():
        return
    rows = load_file(str(path))
    idx = rows["ids"].long()
    bb = model.backbone
    if int(idx.max()) >= bb.get_input_embeddings().weight.shape[0]:
        raise CheckpointError(f"{path}: token id {int(idx.max())} beyond the vocabulary of the rebuilt base")
    with torch.no_grad():
        bb.get_input_embeddings().weight[idx] = rows["input"]
        if "output" in rows:
            bb.get_output_embeddings().weight[idx] = rows["output"]


def read_config(ckpt_dir) -> dict:
    path = Path(ckpt_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (not a p5x checkpoint directory)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _data_hash(data) -> str:
    if hasattr(data, "data_hash"):
        return data.data_hash
    from .schema import load_dataset

    return load_dataset(data).data_hash


def _skeleton(config: dict, tokenizer):
    """A backbone with the saved architecture: from its config dict, or the pretrained base for adapters."""
    from transformers import CONFIG_MAPPING, LlamaForCausalLM, T5ForConditionalGeneration

    from .modeling import apply_lora, build_backbone, resolve_backbone, share_t5_input_tables

    if config.get("adapter_only"):
        backbone = build_backbone(resolve_backbone(config["backbone"]), tokenizer)
    else:
        d = dict(config["backbone_config"])
        mtype = d.pop("model_type")
        cls = {"t5": T5ForConditionalGeneration, "llama": LlamaForCausalLM}.get(mtype)
        if cls is None:
            raise CheckpointError(f"{CONFIG_FILE}: field 'backbone_config.model_type': unsupported {mtype!r}")
        cfg = CONFIG_MAPPING[mtype].from_dict(d)
        if "tie_word_embeddings" in d:  # transformers 5's T5Config ties in its constructor whatever it was given
            cfg.tie_word_embeddings = bool(d["tie_word_embeddings"])
        backbone = cls(cfg)
        share_t5_input_tables(backbone)
    if config.get("peft"):
        backbone = apply_lora(backbone, **config["peft"])
    return backbone


def load_weights(model, path: Path, adapter_only: bool) -> None:
    """Load model.safetensors; missing keys may only be tied aliases (or frozen base weights)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    state = load_file(str(path))
    if adapter_only and not any("lora_" in k for k in state):
        raise CheckpointError(f"{path}: adapter checkpoint without any LoRA tensor (an empty adapter)")
    params = dict(model.named_parameters(remove_duplicate=False))
    aliases: dict[int, str] = {}
    for k in state:
        if k in params:
            first = aliases.setdefault(id(params[k]), k)
            if first != k and not torch.equal(state[first], state[k]):
                raise CheckpointError(f"{path}: tensors {first!r} and {k!r} are one table in this model but differ "
                                      "in the file (saved by an older p5x?)")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: unexpected tensor {result.unexpected_keys[0]!r}")
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    for k in result.missing_keys:
        frozen = adapter_only and k in params and not params[k].requires_grad
        if not frozen and (k not in params or params[k].data_ptr() not in loaded_ptrs):
            raise CheckpointError(f"{path}: missing tensor {k!r}")


def load_checkpoint(ckpt_dir, data=None, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild model, tokenizer, featurizer and indexes; refuse a dataset other than the trained one."""
    from transformers import AutoTokenizer

    from .features import Featurizer
    from .indexing import ItemIndex
    from .modeling import P5XModel

    ckpt_dir = Path(ckpt_dir)
    config = read_config(ckpt_dir)
    if data is not None and config.get("data_hash") and _data_hash(data) != config["data_hash"]:
        raise CheckpointError(f"{ckpt_dir}: trained on data {config['data_hash'][:12]}, "
                              f"given data {_data_hash(data)[:12]} (another dataset or version)")
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt_dir))
    backbone = _skeleton(config, tokenizer)
    model = P5XModel(backbone, whole_word=config["whole_word"], max_words=config["max_words"])
    load_weights(model, ckpt_dir / WEIGHTS_FILE, config.get("adapter_only", False))
    if config.get("adapter_only"):
        restore_added_rows(model, ckpt_dir / ADDED_FILE)
    model.to(device).eval()
    featurizer = Featurizer(tokenizer, model.decoder_only, config["whole_word"], config["max_source_len"],
                            config["max_target_len"], config["max_words"],
                            # absent: written before the option existed
                            target_space=config.get("target_space", False),
                            word_numbering=config.get("word_numbering", "p5"))
    idx = {n: ItemIndex.load(ckpt_dir / f) if (ckpt_dir / f).is_file() else None
           for n, f in (("index", "item_index.json"), ("user_index", "user_index.json"))}
    return Checkpoint(model, tokenizer, featurizer, idx["index"], idx["user_index"], config)


def merge_lora(ckpt_dir, out_dir) -> Path:
    """Fold a LoRA checkpoint's adapter into its base and write a full (non-PEFT) checkpoint.

    The merged weights are W + (alpha / r) * B @ A for every adapted layer (PEFT's merge_and_unload),
    so the merged model gives the adapter model's outputs up to float rounding; it loads with
    load_checkpoint like any full checkpoint and needs neither peft nor the base files.
    """
    from .modeling import P5XModel

    ckpt = load_checkpoint(ckpt_dir)
    if not ckpt.config.get("peft"):
        raise CheckpointError(f"{Path(ckpt_dir) / CONFIG_FILE}: field 'peft': not a LoRA checkpoint, nothing to merge")
    merged = P5XModel(ckpt.model.backbone.merge_and_unload(), whole_word=False)
    merged.word_embed = ckpt.model.word_embed
    config = {k: v for k, v in ckpt.config.items() if k not in ("backbone_config", "adapter_only", "p5x_version")}
    config.update(peft=None, merged_from=str(Path(ckpt_dir).resolve()), merged_lora=ckpt.config["peft"])
    return save_checkpoint(out_dir, merged, ckpt.tokenizer, config, ckpt.index, ckpt.user_index)
