"""LoRA adapters through peft (``model.lora.r > 0``): train a few low-rank matrices instead of every weight.

``Lora(model, settings)`` injects the adapters into ``model`` in place (peft's ``get_peft_model``) and
freezes everything else, so the trainer, the rollout, DDP and FSDP keep working on the same model
object. What LoRA changes elsewhere:

* **Checkpoints** hold the merged weights (W + B A x alpha / r, merged by peft) in the model directory,
  so ``GraceEncoder``, ``grace-eval`` and ``grace-index`` load them as any checkpoint, and the adapter
  beside them in peft's format (``adapter/``: ``PeftModel.from_pretrained(base, "<checkpoint>/adapter")``).
  The merge runs on a CPU copy built from the gathered weights (``grace.distributed.parallel``), never on the
  training weights, so training continues from exactly the weights it had.
* **Resuming** loads the base model again and the adapter from the checkpoint (not the merged weights:
  base and adapter must stay apart for training to continue as it would have).
* **KL reference**: the base model is the policy with its adapter switched off (``WithoutAdapter``), so
  ``algorithm.kl_coef > 0`` loads no second copy of the model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from grace.config import ConfigError, LoraSection
from grace.distributed.parallel import Parallel, materialise, meta_copy

ADAPTER_DIR = "adapter"  # a checkpoint's LoRA adapter, in peft's format, beside the merged weights


@dataclass
class SavedAdapter:
    """An adapter as peft saves it: ``adapter_config.json`` and ``adapter_model.safetensors``."""

    config: object  # peft.LoraConfig
    weights: dict[str, torch.Tensor]  # peft's names (get_peft_model_state_dict), whole tensors on the CPU

    def save(self, directory: Path) -> None:
        from peft.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(directory))
        save_file({name: tensor.contiguous() for name, tensor in self.weights.items()}, str(directory / SAFETENSORS_WEIGHTS_NAME))


def lora_config(settings: LoraSection):
    """peft's ``LoraConfig`` for ``model.lora``; ``target_modules=[all-linear]`` is peft's every linear layer
    but the LM head."""
    from peft import LoraConfig

    targets = list(settings.target_modules)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


# The usual names of the modules that tie the output head to the input embeddings (Llama, Qwen2, SmolLM2).
TIED_NAMES = ("lm_head", "embed_tokens")
UNTIED_TARGETS = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or [all-linear], which leaves the head out"


def tied_modules(model: torch.nn.Module) -> dict[str, list[str]]:
    """Module name -> the other modules holding one of its parameters (the same tensor object), for every
    module that shares one: ``{"lm_head": ["model.embed_tokens"], "model.embed_tokens": ["lm_head"]}`` for a
    model with tied word embeddings (``tie_word_embeddings``)."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for parameter in module.parameters(recurse=False):
            holders.setdefault(id(parameter), []).append(name)
    shared: dict[str, list[str]] = {}
    for names in holders.values():
        unique = list(dict.fromkeys(names))
        for name in unique if len(unique) > 1 else ():
            partners = shared.setdefault(name, [])
            partners.extend(n for n in unique if n != name and n not in partners)
    return shared


def tied_target_error(targets: list[str], module: str, partners: list[str]) -> ConfigError:
    """The refusal of an adapter on a module whose weight is tied to another's (why, and what to target)."""
    return ConfigError(
        f"model.lora.target_modules={targets}: {module!r} shares its weight with {', '.join(map(repr, partners))} (tied word "
        "embeddings, as in SmolLM2, Qwen2.5-1.5B and Llama-3.2-3B). An adapter there would train one tensor under two "
        "names: peft cannot save, merge or export it (KeyError: attribute 'weight' already exists) and a merged head would "
        f"change the input embeddings too. Target the transformer layers instead: {UNTIED_TARGETS}"
    )


def refuse_tied_targets(model: torch.nn.Module, config, targets: list[str]) -> None:
    """Raise ``tied_target_error`` (a ``ConfigError``) when peft's ``config`` would put an adapter on a module
    of ``model`` that shares its weight with another (peft's own name matching decides, so lists, suffixes
    and regular expressions are all covered)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    for name, partners in sorted(tied_modules(model).items()):
        if name and check_target_module_exists(config, name):
            raise tied_target_error(targets, name, partners)


class Lora:
    """The adapters of one trained model."""

    def __init__(self, model: PreTrainedModel, settings: LoraSection, base: str):
        from peft import get_peft_model

        self.config, self.base = lora_config(settings), base
        refuse_tied_targets(model, self.config, list(settings.target_modules))  # before peft changes the model
        self.peft = get_peft_model(model, copy.deepcopy(self.config))  # injects into `model`, freezes its weights
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"model.lora.target_modules={list(settings.target_modules)} matched no layer of {type(model).__name__}")

    def load_adapter(self, checkpoint: Path) -> None:
        """The adapter weights a checkpoint saved (``ADAPTER_DIR``), into the injected adapters."""
        from peft import set_peft_model_state_dict
        from peft.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import load_file

        path = Path(checkpoint) / ADAPTER_DIR / SAFETENSORS_WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{checkpoint} holds no LoRA adapter ({path} is missing): was it trained with model.lora.r > 0?")
        result = set_peft_model_state_dict(self.peft, load_file(str(path)))
        if result.unexpected_keys:
            raise ValueError(f"{path} does not fit model.lora's adapters: unexpected {result.unexpected_keys[:5]}")

    def without_adapter(self, module: torch.nn.Module) -> "WithoutAdapter":
        return WithoutAdapter(module, self.peft)

    def export(self, parallel: Parallel) -> tuple[PreTrainedModel | None, SavedAdapter | None]:
        """(merged model, adapter) to save, on rank 0; (None, None) elsewhere. Every rank must call it (the
        weights are gathered under FSDP)."""
        from peft import get_peft_model, get_peft_model_state_dict

        state = parallel.full_state()
        if state is None:
            return None, None
        # peft merges by adding into the base weights; in one process those tensors are the training weights.
        state = {name: tensor.clone() if ".base_layer." in name else tensor for name, tensor in state.items()}
        skeleton = meta_copy(parallel.model)
        copy_with_adapter = get_peft_model(skeleton, copy.deepcopy(self.config))
        materialise(skeleton, state, parallel.model)
        saved = copy.deepcopy(self.config)
        saved.base_model_name_or_path = self.base  # what the adapter goes on (as model.source names it)
        adapter = SavedAdapter(saved, get_peft_model_state_dict(copy_with_adapter))
        return copy_with_adapter.merge_and_unload(), adapter


class WithoutAdapter(torch.nn.Module):
    """The policy's training module with the LoRA adapter switched off: the base model, the KL reference.

    Calls go through the same (DDP- or FSDP-wrapped) module as the policy's, so under FSDP they gather the
    same shards; ``policy_logprobs`` calls it like any wrapped model."""

    def __init__(self, module: torch.nn.Module, peft_model) -> None:
        super().__init__()
        self.module = module
        self._disabled = peft_model.disable_adapter  # a bound method: not registered as a submodule

    def forward(self, *args, **kwargs):
        with self._disabled():
            return self.module(*args, **kwargs)
