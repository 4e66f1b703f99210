"""MMLLM: modality encoders, input projectors, the LLM backbone and output heads composed into one model.

``F_X = encoder(I_X)``, ``P_X = projector(F_X)``, ``t, S_X = LLM(P_X, F_T)`` and, for any-to-any models,
``H_X = output_projector(S_X)`` conditions a frozen generator. ``build.py`` makes the components from a spec and
opens checkpoints; ``generation.py`` answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from mmllm_sdk.components.llm import target_logprobs
from mmllm_sdk.components.modality import ModalitySpec
from mmllm_sdk.data.examples import FEATURES_KEY
from mmllm_sdk.dtypes import to_module
from mmllm_sdk.errors import InputError, PlaceholderMismatchError, SpecError
from mmllm_sdk.model import generation
from mmllm_sdk.model.build import Parts, build, open_checkpoint, seeded
from mmllm_sdk.model.checkpoint import load_trained, save_checkpoint
from mmllm_sdk.model.heads import EmbeddingHead, OutputHead, TextHead
from mmllm_sdk.model.peft import apply_peft
from mmllm_sdk.model.processor import IGNORE_INDEX, MMLLMProcessor, ModalityInput
from mmllm_sdk.model.signals import install_signal_rows
from mmllm_sdk.model.trainable import set_trainable, spec_patterns
from mmllm_sdk.spec import ENCODER, GENERATOR, LLM, OUTPUT_PROJECTOR, PROJECTOR, ModelSpec

logger = logging.getLogger(__name__)
Response = generation.Response


@dataclass
class MMLLMOutput(ModelOutput):
    """What :meth:`MMLLM.forward` returns, in both modes.

    By default ``logits`` are (B, T, V) at every position, as the LLM returns them (with ``cache``, ``hidden_states``
    and ``attentions`` when asked for), and ``loss`` is the LLM's mean LM loss when ``labels`` are given. With
    ``supervised_only`` the LM head runs only at the K positions where some row's next token has a label: ``logits``
    are (B, K, V) (None with ``skip_logits``) and ``targets`` (B, K) are those next tokens (IGNORE_INDEX where a row
    has none there); with ``token_logprobs``, ``logprobs`` (B, K) are the targets' log-probabilities (0 where
    IGNORE_INDEX).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None  # (B, K), with supervised_only and token_logprobs
    cache: Any = None  # the LLM's key/value cache, with use_cache
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class ParameterCount:
    component: str  # "llm", "inputs.image.encoder", …
    total: int
    trainable: int


class MMLLM(nn.Module):
    """A multimodal LLM: understanding (inputs -> text) and, with output heads, any-to-any.

    Build one with :func:`build_model` or :meth:`from_pretrained`; ``processor`` turns conversations into batches,
    ``forward(**batch)`` returns an :class:`MMLLMOutput` (``.loss`` when the batch has labels), ``generate`` answers.
    """

    def __init__(self, spec: ModelSpec, parts: Parts) -> None:
        super().__init__()
        self.spec = spec
        self.llm = parts.llm
        self.encoders = nn.ModuleDict(parts.encoders)
        self.input_projectors = nn.ModuleDict(parts.input_projectors)
        self.output_projectors = nn.ModuleDict(parts.output_projectors)
        self.generators = nn.ModuleDict(parts.generators)
        self.sources = parts.sources  # component path -> the plugin registration it was built from
        ids = self.llm.add_special_tokens([parts.modalities[m].placeholder for m in parts.encoders])
        self.placeholder_ids = dict(zip(parts.encoders, ids, strict=True))
        self.output_heads: dict[str, OutputHead] = {}
        for modality in sorted(parts.signal_tokens):  # in name order: the trained rows follow the ids
            self._add_head(parts.modalities[modality], parts.signal_tokens[modality])
        if self.output_heads:
            install_signal_rows(self.llm.model, [i for head in self.output_heads.values() for i in head.signal_ids])
        inputs = {
            m: ModalityInput(parts.modalities[m], self.encoders[m], self.placeholder_ids[m], projector.num_tokens)
            for m, projector in self.input_projectors.items()
        }
        self.processor = MMLLMProcessor(self.llm, inputs, signals={m: h.template for m, h in self.output_heads.items()})
        self.frozen: set[str] = set()  # component paths that are frozen (and kept in eval mode)
        self.carried_parameters: set[str] = set()  # trained in an earlier stage, frozen now: still saved

    def _add_head(self, spec: ModalitySpec, tokens: list[str]) -> None:
        modality = spec.name
        taken = [token for token in tokens if token in self.llm.tokenizer.get_vocab()]
        if taken:
            raise SpecError(
                f"outputs.{modality}: the signal tokens {', '.join(taken)} are already in the LLM's vocabulary, so "
                "they could not be told apart from its own text; register a SignalVocabulary with another prefix."
            )
        ids, generator = self.llm.add_special_tokens(tokens), self.generators[modality]
        if modality in self.output_projectors:
            self.output_heads[modality] = EmbeddingHead(spec, tokens, ids, generator, self.output_projectors[modality])
        else:
            self.output_heads[modality] = TextHead(spec, tokens, ids, generator)

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec | dict[str, Any],
        *,
        skeleton: bool = False,
        progress: bool = True,
        trust_remote_code: bool = False,
    ) -> MMLLM:
        """The model a spec describes (see :func:`build_model`)."""
        return build(spec, cls._compose, skeleton=skeleton, progress=progress, trust_remote_code=trust_remote_code)

    @classmethod
    def _compose(cls, spec: ModelSpec, parts: Parts) -> MMLLM:
        model = cls(spec, parts)
        if spec.llm.peft is not None:  # after the placeholders and signal tokens are added
            with seeded(spec.seed, "llm.peft"):
                apply_peft(model.llm, spec.llm.peft)
        set_trainable(model, spec_patterns(spec))
        for row in model.parameter_counts():
            logger.info("%s: %d parameters, %d trainable", row.component, row.total, row.trainable)
        return model

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], *, trust_remote_code: bool = False, **build_kwargs: Any
    ) -> MMLLM:
        """Rebuild a model from an SDK checkpoint through the installed plugins (safetensors only, digests checked).
        A checkpoint whose spec asks for ``trust_remote_code`` is refused unless this call passes it too."""
        spec, state, origin, check_bases = open_checkpoint(directory, trust_remote_code)
        model = cls.from_spec(spec, trust_remote_code=trust_remote_code, **build_kwargs)
        check_bases(model.components())
        load_trained(model, state, origin)
        return model

    def save_pretrained(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write an SDK checkpoint: ``mmllm.json`` and the trainable tensors in ``trainable.safetensors``; an existing
        file or non-empty folder there is replaced only with ``overwrite=True``."""
        save_checkpoint(self, directory, overwrite)

    # the parts, and what trains ------------------------------------------------------------------
    @property
    def signal_ids(self) -> dict[str, list[int]]:
        """Output modality -> its signal tokens' ids, in order."""
        return {modality: head.signal_ids for modality, head in self.output_heads.items()}

    @property
    def signal_tokens(self) -> dict[str, list[str]]:
        """Output modality -> its signal tokens, ``<img_0>`` …"""
        return {modality: head.signal_tokens for modality, head in self.output_heads.items()}

    def components(self) -> dict[str, nn.Module]:
        """Each component by its path in the spec: ``llm``, ``inputs.<m>.encoder`` / ``.projector``, outputs'."""
        parts: dict[str, nn.Module] = {LLM: self.llm}
        for modality in self.encoders:
            parts[ENCODER.format(modality)] = self.encoders[modality]
            parts[PROJECTOR.format(modality)] = self.input_projectors[modality]
        for modality, head in self.output_heads.items():
            if head.projector is not None:
                parts[OUTPUT_PROJECTOR.format(modality)] = head.projector
            parts[GENERATOR.format(modality)] = head.generator
        return parts

    def is_frozen(self, component: str) -> bool:
        return component in self.frozen

    def train(self, mode: bool = True) -> MMLLM:
        super().train(mode)
        for component, module in self.components().items():
            if component in self.frozen:
                module.eval()
        return self

    def parameter_counts(self) -> list[ParameterCount]:
        """Total and trainable parameters per component (shared tensors counted once)."""
        rows = []
        for component, module in self.components().items():
            params = {id(p): p for p in module.parameters()}.values()
            trainable = sum(p.numel() for p in params if p.requires_grad)
            rows.append(ParameterCount(component, sum(p.numel() for p in params), trainable))
        return rows

    # forward -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def get_modality_features(self, modality: str, **inputs: torch.Tensor) -> torch.Tensor:
        """Soft prompt tokens P_X of a batch of items: (items, M, D_llm)."""
        frozen = self.is_frozen(ENCODER.format(modality))
        if FEATURES_KEY in inputs:  # read from the feature cache: F_X without running the encoder
            if not frozen:
                raise InputError(
                    f"The batch carries cached {modality} features, but the {modality} encoder is trainable."
                )
            features = inputs[FEATURES_KEY].to(self.device)
        else:
            with torch.no_grad() if frozen else contextlib.nullcontext():
                features = self.encoders[modality](**{k: v.to(self.device) for k, v in inputs.items()})  # (items, N, D)
        projector = self.input_projectors[modality]
        return projector(to_module(features, projector))  # (items, M, D_llm)

    def embed_inputs(
        self, input_ids: torch.Tensor, modality_inputs: dict[str, dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        """Token embeddings with each modality's projected features scattered into its placeholder positions."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, T, D_llm)
        for modality, placeholder_id in self.placeholder_ids.items():
            positions = input_ids == placeholder_id  # (B, T)
            expected = int(positions.sum())
            inputs = modality_inputs.get(modality)
            if inputs is None:
                if expected:
                    raise PlaceholderMismatchError(
                        f"input_ids hold {expected} {modality} placeholder position(s) but the batch has no "
                        f"'{modality}' inputs; build batches with model.processor."
                    )
                continue
            features = self.get_modality_features(modality, **inputs)
            found = features.shape[0] * features.shape[1]
            if found != expected:
                raise PlaceholderMismatchError(
                    f"input_ids hold {expected} {modality} placeholder position(s) but the {features.shape[0]} "
                    f"{modality} input(s) give {found} feature token(s) ({features.shape[1]} each); build batches "
                    "with model.processor so that every placeholder is expanded to the projector's token count."
                )
            mask = positions.unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, features.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        supervised_only: bool = False,
        num_items_in_batch: int | torch.Tensor | None = None,
        skip_logits: bool = False,
        token_logprobs: bool = False,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> MMLLMOutput:
        """An :class:`MMLLMOutput` for a processor batch (``.loss`` when ``labels`` are given).

        Keyword arguments named after a modality (``image={"pixel_values": …}``) are that modality's encoder inputs;
        the rest go to the LLM (``use_cache``, ``output_hidden_states``, …). With ``supervised_only`` the LM head runs
        only where a label is set (the training recipes use this); the loss is the mean over this batch's supervised
        tokens, or their sum divided by ``num_items_in_batch`` (the Trainer's count over a whole optimizer step).
        ``skip_logits`` (with ``supervised_only``; the Trainer's loss) computes the loss without the (B, K, V) logits,
        a chunk of supervised rows at a time, where the LLM's head splits from its decoder (``logits`` is then None).
        ``token_logprobs`` (with ``supervised_only``; the preference and RL recipes) gives each target token's
        log-probability under the logits divided by ``temperature`` as ``logprobs`` (B, K), likewise without the
        logits where the head splits; ``loss`` is then their negative sum over the divisor.
        """
        modality_inputs = {k: kwargs.pop(k) for k in list(kwargs) if k in self.encoders}
        unknown = [k for k, v in kwargs.items() if isinstance(v, dict)]
        if unknown:
            raise InputError(
                f"The batch has {', '.join(unknown)} inputs, but this model takes only "
                f"{', '.join(self.encoders) or 'text'}."
            )
        if (skip_logits or token_logprobs) and not supervised_only:
            raise InputError("skip_logits and token_logprobs work with supervised_only=True (and labels) only.")
        if not temperature > 0:
            raise InputError(f"temperature is {temperature}; the logits are divided by it: give a number above 0.")
        inputs_embeds = self.embed_inputs(input_ids, modality_inputs)
        if not supervised_only:
            out = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
            fields = ("loss", "logits", "cache", "hidden_states", "attentions")
            return MMLLMOutput(**{name: getattr(out, name, None) for name in fields})
        if labels is None:
            raise InputError("supervised_only needs labels; build the batch with model.processor (not for generation).")
        targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()  # (K,)
        if positions.numel() == 0:
            raise InputError(
                "The batch has no supervised tokens (every label is IGNORE_INDEX); each training example needs an "
                "assistant answer (or a caption) to learn from."
            )
        shared = self.shared_prefix_length(input_ids, attention_mask, limit=int(positions[0]))
        targets = targets[:, positions]  # (B, K)
        flat_targets = targets.flatten()
        count = (flat_targets != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
        divisor = torch.as_tensor(count, device=inputs_embeds.device, dtype=torch.float32)
        logits = logprobs = None
        if (skip_logits or token_logprobs) and self.llm.head_splits(inputs_embeds):
            states = self.llm.logits_at(inputs_embeds, attention_mask, positions, shared, states=True, **kwargs)
            supervised = flat_targets != IGNORE_INDEX  # the LM head runs on these rows only
            rows, supervised_targets = states.flatten(0, 1)[supervised], flat_targets[supervised]
            if token_logprobs:
                picked = self.llm.chunked_logprobs(rows, supervised_targets, temperature)
                logprobs = picked.new_zeros(flat_targets.shape).masked_scatter(supervised, picked).view_as(targets)
            else:
                loss = self.llm.chunked_loss(rows, supervised_targets, divisor)
        else:
            logits = self.llm.logits_at(inputs_embeds, attention_mask, positions, shared_prefix=shared, **kwargs)
            if token_logprobs:
                logprobs = target_logprobs(logits, targets, temperature)
            else:
                flat_logits = logits.float().flatten(0, 1)
                loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum") / divisor
        if logprobs is not None:
            loss = -logprobs.sum() / divisor
        return MMLLMOutput(loss=loss, logits=logits, targets=targets, logprobs=logprobs)

    def shared_prefix_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, limit: int) -> int:
        """How many leading tokens every row of a batch shares (at most ``limit``): text tokens only, all attended.
        A chat template's system prompt is such a prefix: :meth:`LLMBackbone.logits_at` computes it once per batch."""
        same = (input_ids == input_ids[:1]).all(dim=0)  # (T,)
        for placeholder_id in self.placeholder_ids.values():  # soft tokens differ from image to image
            same &= ~(input_ids == placeholder_id).any(dim=0)
        if attention_mask is not None:
            same &= attention_mask.bool().all(dim=0)
        differs = (~same[:limit]).nonzero()
        return int(differs[0]) if differs.numel() else min(limit, same.numel())

    # the output side ----------------------------------------------------------------------------
    def signal_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        modality_inputs: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, tuple[list[tuple[int, int]], torch.Tensor]]:
        """S_X of a batch: per embedding-conditioned output modality, where its complete runs of signal tokens are
        (``(row, start)`` each) and their last hidden states (runs, k, D_llm). Modalities without a run are left out."""
        rows = input_ids.tolist()
        runs = {
            modality: [(row, start) for row, ids in enumerate(rows) for start in head.find_runs(ids)]
            for modality, head in self.output_heads.items()
            if isinstance(head, EmbeddingHead)
        }
        runs = {modality: found for modality, found in runs.items() if found}
        if not runs:
            return {}
        # positions count attended tokens only, as in generation, so a left-padded row gives the states it gives alone
        positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
        embeds = self.embed_inputs(input_ids, modality_inputs or {})
        hidden = self.llm(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, output_hidden_states=True
        ).hidden_states[-1]  # (B, T, D)
        states = {}
        for modality, found in runs.items():
            k = len(self.output_heads[modality].signal_ids)
            states[modality] = (found, torch.stack([hidden[row, start : start + k] for row, start in found]))
        return states

    def project_signals(self, modality: str, signal_states: torch.Tensor) -> torch.Tensor:
        """H_X: signal states (n, k, D_llm) through the modality's output projector."""
        head = self.output_heads.get(modality)
        if not isinstance(head, EmbeddingHead):
            raise InputError(
                f"{modality!r} is not an output of this model conditioned on embeddings; those are: "
                f"{', '.join(m for m, h in self.output_heads.items() if isinstance(h, EmbeddingHead)) or 'none'}."
            )
        return head.project(signal_states)

    # generation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, messages: list[dict[str, Any]], **generation_kwargs: Any) -> Response:
        """Answer one conversation; keyword arguments go to the LLM's ``generate`` (``max_new_tokens``, …).
        For any-to-any models, ``output_dir`` saves generated items there (PNG, WAV) and ``generator_kwargs`` go to each
        generator (``num_inference_steps``, ``seed`` …)."""
        return self.generate_batch([messages], **generation_kwargs)[0]

    generate_batch = generation.generate_batch  # one Response per conversation, in order


def build_model(
    spec: ModelSpec | dict[str, Any], *, skeleton: bool = False, progress: bool = True, trust_remote_code: bool = False
) -> MMLLM:
    """Build the model a spec describes: checked, then built in a skeleton (weights on ``meta``) so that dimension
    errors surface before any weight is read, then for real. ``skeleton=True`` returns the skeleton. A spec asking
    for ``trust_remote_code`` (code from a model folder) is refused unless ``trust_remote_code=True``."""
    return MMLLM.from_spec(spec, skeleton=skeleton, progress=progress, trust_remote_code=trust_remote_code)
