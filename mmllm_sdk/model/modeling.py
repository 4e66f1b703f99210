"""MMLLM: encoders, input projectors and the LLM backbone composed into one model."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.utils import ModelOutput

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.generator import ModalityGenerator, TextConditionedGenerator
from mmllm_sdk.components.hf import reuse_loaded_files, skeleton_mode
from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.components.output_projector import ConditionSpec, OutputProjector
from mmllm_sdk.components.projector import InputProjector
from mmllm_sdk.data.feature_cache import FEATURES_KEY
from mmllm_sdk.data.messages import TEXT_SLOT
from mmllm_sdk.errors import DimensionError, InputError, PlaceholderMismatchError, PluginError, SpecError
from mmllm_sdk.model.artifacts import save_outputs
from mmllm_sdk.model.processor import IGNORE_INDEX, MMLLMProcessor, ModalityInput
from mmllm_sdk.model.signals import install_signal_rows, signal_row_parameters
from mmllm_sdk.registry import Registration, get_registry
from mmllm_sdk.spec import ModelSpec, parse_spec
from mmllm_sdk.training.peft import apply_peft

logger = logging.getLogger(__name__)
TEXT_SIGNAL_TOKENS = 2  # a text-conditioned output: <x_0> opens the text, <x_1> closes it


@dataclass
class Response:
    """What :meth:`MMLLM.generate` returns: the text and, for any-to-any models, generated items per modality."""

    text: str
    outputs: dict[str, list[Any]] = field(default_factory=dict)  # modality -> generated items (PIL images, AudioClips)
    token_ids: list[int] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # modality -> where the items were saved (output_dir)


@dataclass
class SupervisedOutput(ModelOutput):
    """The LM loss computed only where a next token is supervised (what training needs).

    ``logits`` (B, K, V) are at the K positions where any row's next token has a label;
    ``targets`` (B, K) are those next tokens (IGNORE_INDEX where a row has none there).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


@dataclass(frozen=True)
class ParameterCount:
    component: str  # "llm", "inputs.image.encoder", …
    total: int
    trainable: int


class MMLLM(nn.Module):
    """A multimodal LLM for understanding: ``F_X = encoder(I_X)``, ``P_X = projector(F_X)``, ``t = LLM(P_X, F_T)``.

    Build one with :func:`build_model` (from a spec) or :meth:`from_pretrained` (from a
    checkpoint). ``processor`` turns conversations into batches; ``forward(**batch)``
    returns the LLM's output with ``.loss`` when the batch has labels.
    """

    def __init__(
        self,
        spec: ModelSpec,
        llm: LLMBackbone,
        encoders: dict[str, ModalityEncoder],
        input_projectors: dict[str, InputProjector],
        sources: dict[str, Registration],
        output_projectors: dict[str, OutputProjector] | None = None,
        generators: dict[str, ModalityGenerator] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.llm = llm
        self.encoders = nn.ModuleDict(encoders)
        self.input_projectors = nn.ModuleDict(input_projectors)
        self.output_projectors = nn.ModuleDict(output_projectors or {})
        self.generators = nn.ModuleDict(generators or {})
        self.sources = sources  # component path -> the plugin registration it was built from
        registry = get_registry()
        modalities = {name: registry.modality(name) for name in encoders}
        ids = llm.add_special_tokens([m.placeholder for m in modalities.values()])
        self.placeholder_ids = {name: token_id for name, token_id in zip(modalities, ids, strict=True)}
        self.signal_tokens: dict[str, list[str]] = {}  # output modality -> its k signal tokens, <img_0> …
        self.signal_ids = self._add_signal_tokens(registry)  # output modality -> their token ids, in order
        self.processor = MMLLMProcessor(
            llm,
            {
                name: ModalityInput(
                    modalities[name], encoders[name], self.placeholder_ids[name], input_projectors[name].num_tokens
                )
                for name in encoders
            },
            signals={modality: self.signal_template(modality) for modality in self.signal_tokens},
        )
        self._frozen: set[str] = set()
        self.carried_parameters: set[str] = set()  # trained in an earlier stage, frozen now: still saved

    def signal_template(self, modality: str) -> str:
        """How an output part is written in an assistant turn: its k signal tokens, or for a text-conditioned
        generator the text between the opening and the closing token."""
        tokens = self.signal_tokens[modality]
        if isinstance(self.generators[modality], TextConditionedGenerator):
            return f"{tokens[0]}{TEXT_SLOT}{tokens[1]}"
        return "".join(tokens)

    def _add_signal_tokens(self, registry: Any) -> dict[str, list[int]]:
        """Add each output modality's k signal tokens to the tokenizer and give them trainable rows."""
        if not self.spec.outputs:
            return {}
        vocabulary = self.llm.tokenizer.get_vocab()
        signal_ids = {}
        # in name order: a checkpoint's spec may list the outputs in another order, and the trained rows follow the ids
        for modality, outputs in sorted(self.spec.outputs.items()):
            tokens = registry.signal_vocabulary(modality, outputs.signal_tokens).tokens
            taken = [token for token in tokens if token in vocabulary]
            if taken:
                raise SpecError(
                    f"outputs.{modality}: the signal tokens {', '.join(taken)} are already in the LLM's vocabulary, so "
                    "they could not be told apart from its own text; register a SignalVocabulary with another prefix."
                )
            signal_ids[modality] = self.llm.add_special_tokens(tokens)
            self.signal_tokens[modality] = tokens
        install_signal_rows(self.llm.model, [i for ids in signal_ids.values() for i in ids])
        return signal_ids

    # freezing --------------------------------------------------------------------------------

    def components(self) -> dict[str, nn.Module]:
        """Each component by its path in the spec: ``llm``, ``inputs.<modality>.encoder`` / ``.projector``."""
        parts: dict[str, nn.Module] = {"llm": self.llm}
        for modality in self.encoders:
            parts[f"inputs.{modality}.encoder"] = self.encoders[modality]
            parts[f"inputs.{modality}.projector"] = self.input_projectors[modality]
        for modality in self.generators:
            if modality in self.output_projectors:
                parts[f"outputs.{modality}.output_projector"] = self.output_projectors[modality]
            parts[f"outputs.{modality}.generator"] = self.generators[modality]
        return parts

    def set_signal_rows_trainable(self, trainable: bool) -> None:
        """Train (or freeze) the signal tokens' embedding and LM-head rows; the rest of both tables stays frozen."""
        for parameter in signal_row_parameters(self.llm):
            parameter.requires_grad_(trainable)

    def set_trainable(self, component: str, trainable: bool) -> None:
        """Freeze or unfreeze one component; a frozen one also stays in eval mode (no dropout)."""
        module = self.components()[component]
        module.requires_grad_(trainable)
        if trainable:
            self._frozen.discard(component)
        else:
            self._frozen.add(component)
            module.eval()

    def is_frozen(self, component: str) -> bool:
        """Whether a component (``llm``, ``inputs.image.encoder`` …) is frozen."""
        return component in self._frozen

    def train(self, mode: bool = True) -> MMLLM:
        super().train(mode)
        for component, module in self.components().items():
            if component in self._frozen:
                module.eval()
        return self

    def parameter_counts(self) -> list[ParameterCount]:
        """Total and trainable parameters per component (shared tensors counted once)."""
        rows = []
        for component, module in self.components().items():
            params = {id(p): p for p in module.parameters()}.values()
            rows.append(
                ParameterCount(
                    component, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
                )
            )
        return rows

    # forward ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def get_modality_features(self, modality: str, **inputs: torch.Tensor) -> torch.Tensor:
        """Soft prompt tokens P_X of a batch of items: (items, M, D_llm)."""
        encoder = self.encoders[modality]
        frozen = self.is_frozen(f"inputs.{modality}.encoder")
        if FEATURES_KEY in inputs:  # read from the feature cache: F_X without running the encoder
            if not frozen:
                raise InputError(
                    f"The batch carries cached {modality} features, but the {modality} encoder is trainable."
                )
            features = inputs[FEATURES_KEY].to(self.device)
        else:
            with torch.no_grad() if frozen else contextlib.nullcontext():
                features = encoder(**{k: v.to(self.device) for k, v in inputs.items()})  # (items, N, D)
        projector = self.input_projectors[modality]
        weight = next(projector.parameters(), None)
        if weight is not None:  # a frozen bfloat16 encoder feeds a float32 projector
            features = features.to(weight.dtype)
        return projector(features)  # (items, M, D_llm)

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
        **kwargs: Any,
    ) -> Any:
        """The LLM's output (``.logits``, and ``.loss`` when ``labels`` are given) for a processor batch.

        Keyword arguments named after a modality (``image={"pixel_values": …}``) are that
        modality's encoder inputs; the rest go to the LLM (``use_cache``, ``output_hidden_states``, …).
        With ``supervised_only`` the LM head runs only where a label is set and the result
        is a :class:`SupervisedOutput` (the training recipes use this); its loss is the mean
        over this batch's supervised tokens, or their sum divided by ``num_items_in_batch``
        (the Trainer's count over a whole optimizer step: accumulation steps and processes).
        """
        modality_inputs = {k: kwargs.pop(k) for k in list(kwargs) if k in self.encoders}
        modalities = {entry.name for entry in get_registry().entries("modalities")}
        unknown = [k for k in kwargs if k in modalities]
        if unknown:
            raise InputError(
                f"The batch has {', '.join(unknown)} inputs, but this model takes only {', '.join(self.encoders) or 'text'}."
            )
        inputs_embeds = self.embed_inputs(input_ids, modality_inputs)
        if not supervised_only:
            return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
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
        logits = self.llm.logits_at(inputs_embeds, attention_mask, positions, shared_prefix=shared, **kwargs)
        targets = targets[:, positions]  # (B, K)
        if num_items_in_batch is None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        else:
            total = F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device, dtype=total.dtype)
        return SupervisedOutput(loss=loss, logits=logits, targets=targets)

    def shared_prefix_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, limit: int) -> int:
        """How many leading tokens every row of a batch shares (at most ``limit``): text tokens only, all attended.

        A chat template's system prompt is such a prefix: :meth:`LLMBackbone.logits_at`
        computes it once per batch instead of once per row.
        """
        same = (input_ids == input_ids[:1]).all(dim=0)  # (T,)
        for placeholder_id in self.placeholder_ids.values():  # soft tokens differ from image to image
            same &= ~(input_ids == placeholder_id).any(dim=0)
        if attention_mask is not None:
            same &= attention_mask.bool().all(dim=0)
        differs = (~same[:limit]).nonzero()
        return int(differs[0]) if differs.numel() else min(limit, same.numel())

    @torch.no_grad()
    def generate(self, messages: list[dict[str, Any]], **generation_kwargs: Any) -> Response:
        """Answer one conversation; keyword arguments go to the LLM's ``generate`` (``max_new_tokens``, …).

        For any-to-any models, ``output_dir`` saves generated items there (PNG, WAV) and
        ``generator_kwargs`` go to each generator (``num_inference_steps``, ``seed`` …).
        """
        return self.generate_batch([messages], **generation_kwargs)[0]

    @torch.no_grad()
    def generate_batch(
        self,
        conversations: list[list[dict[str, Any]]],
        *,
        output_dir: str | os.PathLike[str] | None = None,
        generator_kwargs: dict[str, Any] | None = None,
        **generation_kwargs: Any,
    ) -> list[Response]:
        """Answer several conversations in one left-padded batch: one :class:`Response` each, in order.

        Greedy answers equal :meth:`generate`'s one by one (padding is masked out of attention and positions).
        When the LLM emits the first signal token of an output modality, the other k - 1 are
        forced; their hidden states go through the output projector to the generator, and the
        generated items are in ``Response.outputs`` (and saved under ``output_dir`` when given).
        """
        if not conversations:
            return []
        batch = self.processor(conversations, add_generation_prompt=True)
        modality_inputs = {k: batch[k] for k in self.encoders if k in batch}
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        inputs_embeds = self.embed_inputs(input_ids, modality_inputs)
        if self.signal_ids:
            processors = generation_kwargs.pop("logits_processor", None) or LogitsProcessorList()
            forced = {m: ids for m, ids in self.signal_ids.items() if m in self.output_projectors}
            processors.append(SignalForcing(forced, self.llm.get_input_embeddings().weight.shape[0]))
            generation_kwargs["logits_processor"] = processors
        new_tokens = self.llm.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs
        )  # (B, T_new), right-padded with pad ids after a row's end-of-turn token
        rows = [_until_end(row, self.llm) for row in new_tokens.tolist()]
        responses = [Response(text=self.processor.decode(ids), token_ids=ids) for ids in rows]
        if self.signal_ids:
            self._generate_outputs(input_ids, attention_mask, modality_inputs, rows, responses, generator_kwargs or {})
            if output_dir is not None:
                for index, response in enumerate(responses):
                    response.files = save_outputs(response.outputs, output_dir, prefix=f"{index}-" if index else "")
        return responses

    def signal_states(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """The LLM's last hidden states (B, T, D_llm) for a sequence: S_X are those at signal-token positions.

        Positions count attended tokens only, as in generation, so a left-padded row gives the
        states it gives alone.
        """
        positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
        output = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            output_hidden_states=True,
        )
        return output.hidden_states[-1]

    def generator_kwargs_for(self, modality: str, generator_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``{"image": {...}, "audio": {...}}`` gives each generator its own; other keys go to every generator."""
        if generator_kwargs and set(generator_kwargs) <= set(self.generators):
            return dict(generator_kwargs.get(modality, {}))
        return dict(generator_kwargs)

    def _generate_from_text(
        self, modality: str, rows: list[list[int]], responses: list[Response], generator_kwargs: dict[str, Any]
    ) -> None:
        """The texts between a text-conditioned modality's opening and closing tokens, through its generator."""
        opening, closing = self.signal_ids[modality]
        picked = []
        for index, row in enumerate(rows):
            start = 0
            while opening in row[start:]:
                begin = row.index(opening, start) + 1
                end = row.index(closing, begin) if closing in row[begin:] else len(row)
                picked.append((index, self.processor.decode(row[begin:end]).strip()))
                start = end
        if picked:
            texts = [text for _, text in picked]
            items = self.generators[modality].generate_from_text(
                texts, **self.generator_kwargs_for(modality, generator_kwargs)
            )
            for (index, _), item in zip(picked, items, strict=True):
                responses[index].outputs.setdefault(modality, []).append(item)

    def _generate_outputs(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        modality_inputs: dict[str, Any],
        rows: list[list[int]],
        responses: list[Response],
        generator_kwargs: dict[str, Any],
    ) -> None:
        """Find complete runs of signal tokens in the answers, project their states and generate the items."""
        for modality in self.signal_ids:
            if modality not in self.output_projectors:  # conditioned on the text between its two tokens
                self._generate_from_text(modality, rows, responses, generator_kwargs)
        runs = {m: [find_signal_runs(row, self.signal_ids[m]) for row in rows] for m in self.output_projectors}
        if not any(starts for per_row in runs.values() for starts in per_row):
            return
        width = max(len(row) for row in rows)
        new_ids = torch.full((len(rows), width), self.llm.tokenizer.pad_token_id, dtype=torch.long)
        new_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            new_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            new_mask[index, : len(row)] = 1
        full_ids = torch.cat([prompt_ids, new_ids.to(self.device)], dim=1)  # (B, T_prompt + T_new)
        full_mask = torch.cat([prompt_mask, new_mask.to(self.device)], dim=1)
        states = self.signal_states(full_ids, self.embed_inputs(full_ids, modality_inputs), full_mask)  # (B, T, D)
        offset = prompt_ids.shape[1]
        for modality, per_row in runs.items():
            k = len(self.signal_ids[modality])
            picked = [(index, start) for index, starts in enumerate(per_row) for start in starts]
            if not picked:
                continue
            signal = torch.stack([states[index, offset + start : offset + start + k] for index, start in picked])
            projector = self.output_projectors[modality]
            weight = next(projector.parameters(), None)
            conditioning = projector(signal if weight is None else signal.to(weight.dtype))  # (items, num_tokens, dim)
            items = self.generators[modality].generate(
                conditioning, **self.generator_kwargs_for(modality, generator_kwargs)
            )
            for (index, _), item in zip(picked, items, strict=True):
                responses[index].outputs.setdefault(modality, []).append(item)

    # checkpoints -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write an SDK checkpoint: ``mmllm.json`` and the trainable tensors in ``trainable.safetensors``."""
        from mmllm_sdk.model.checkpoint import save_checkpoint

        save_checkpoint(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **build_kwargs: Any) -> MMLLM:
        """Rebuild a model from an SDK checkpoint through the installed plugins."""
        from mmllm_sdk.model.checkpoint import load_checkpoint

        return load_checkpoint(directory, **build_kwargs)


class SignalForcing(LogitsProcessor):
    """Once the LLM emits the first signal token of a modality, the other k - 1 follow in order.

    A signal token other than the first can only come as the next of a run: the LLM decides
    whether to produce a modality (its first token), the rest is forced.
    """

    def __init__(self, signal_ids: dict[str, list[int]], vocab_size: int) -> None:
        self.next_id = torch.full((vocab_size,), -1, dtype=torch.long)  # token id -> the signal token forced after it
        self.followers = torch.tensor([i for ids in signal_ids.values() for i in ids[1:]], dtype=torch.long)
        for ids in signal_ids.values():
            for current, following in itertools.pairwise(ids):
                self.next_id[current] = following

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        if len(self.followers):
            scores[:, self.followers.to(scores.device)] = float("-inf")
        if input_ids.shape[1] == 0:
            return scores
        forced = self.next_id.to(input_ids.device)[input_ids[:, -1]]  # (B,)
        for row in (forced >= 0).nonzero().flatten().tolist():
            scores[row] = float("-inf")
            scores[row, forced[row]] = 0.0
        return scores


def find_signal_runs(token_ids: list[int], signal_ids: list[int]) -> list[int]:
    """Where complete runs of ``signal_ids`` (in order) start in ``token_ids``."""
    k = len(signal_ids)
    return [i for i in range(len(token_ids) - k + 1) if token_ids[i : i + k] == signal_ids]


def _until_end(token_ids: list[int], llm: LLMBackbone) -> list[int]:
    """A generated row up to and including its first end-of-sequence token (the rest is batch padding)."""
    ends = llm.end_token_ids()
    for index, token_id in enumerate(token_ids):
        if token_id in ends:
            return token_ids[: index + 1]
    return token_ids


# building ------------------------------------------------------------------------------------


def build_model(spec: ModelSpec | dict[str, Any], *, skeleton: bool = False, progress: bool = True) -> MMLLM:
    """Build the model a spec describes.

    The spec is checked against the plugins first; then every component is built in a
    skeleton (configs only, weights on the ``meta`` device) so that dimension errors
    surface before any weight is read. With ``skeleton=True`` that skeleton is returned
    (``mmllm validate`` uses it to count parameters).
    """
    spec = parse_spec(spec)
    with reuse_loaded_files():
        with skeleton_mode():
            model = _assemble(spec, progress=False)
        if skeleton:
            return model
        return _assemble(spec, progress=progress)


def _assemble(spec: ModelSpec, progress: bool) -> MMLLM:
    registry = get_registry()
    steps = (
        1
        + 2 * len(spec.inputs)
        + len(spec.outputs)
        + sum(o.output_projector is not None for o in spec.outputs.values())
    )
    bar = tqdm(total=steps, desc="Building model", unit="component", disable=not progress)
    sources: dict[str, Registration] = {}

    def make(path: str, entry: Registration, contract: type, *args: Any, **kwargs: Any) -> Any:
        bar.set_postfix_str(f"{path}: {entry.name}")
        sources[path] = entry
        with _seeded(spec.seed, path):
            try:
                component = entry.build(*args, **kwargs)
            except SpecError as exc:  # say where in the spec: "inputs.image.encoder: hf-clip-vision.params.… is …"
                raise type(exc)(f"{path}: {exc}") from exc
        if not isinstance(component, contract):
            names = " or ".join(c.__name__ for c in (contract if isinstance(contract, tuple) else (contract,)))
            raise PluginError(
                f"Plugin {entry.plugin!r} built the {entry.label} as a {type(component).__name__}; it must return a {names}."
            )
        bar.update(1)
        return component

    llm_entry = registry.get("llms", spec.llm.name)
    llm = make("llm", llm_entry, LLMBackbone, spec.llm.params)
    encoders, projectors = {}, {}
    for modality, inputs in spec.inputs.items():
        entry = registry.get("encoders", inputs.encoder.name, modality=modality)
        encoder = make(f"inputs.{modality}.encoder", entry, ModalityEncoder, inputs.encoder.params)
        _check_modality(entry, encoder, modality)
        entry = registry.get("projectors", inputs.projector.name)
        projector = make(
            f"inputs.{modality}.projector",
            entry,
            InputProjector,
            in_dim=encoder.output_dim,
            out_dim=llm.hidden_size,
            num_input_tokens=encoder.num_tokens,
            params=inputs.projector.params,
        )
        if projector.out_dim != llm.hidden_size:
            raise DimensionError(
                f"inputs.{modality}.projector ({inputs.projector.name}) outputs {projector.out_dim} dims but the LLM "
                f"embeds in {llm.hidden_size}; the projector must map to the LLM's hidden size."
            )
        encoders[modality], projectors[modality] = encoder, projector
    generators, output_projectors = {}, {}
    for modality, outputs in spec.outputs.items():
        entry = registry.get("generators", outputs.generator.name, modality=modality)
        contracts = (ModalityGenerator, TextConditionedGenerator)
        generator = make(f"outputs.{modality}.generator", entry, contracts, outputs.generator.params)
        _check_modality(entry, generator, modality)
        generators[modality] = generator
        if isinstance(generator, TextConditionedGenerator):
            _check_text_output(modality, outputs)
            continue
        condition = getattr(generator, "condition_spec", None)
        if not (isinstance(condition, ConditionSpec) and condition.num_tokens >= 1 and condition.dim >= 1):
            raise PluginError(
                f"Plugin {entry.plugin!r}: the {entry.label} reports condition_spec {condition!r}; a generator "
                "conditioned on embeddings needs a ConditionSpec of at least one token of at least one value, which "
                "an output projector can produce."
            )
        if outputs.output_projector is None:
            raise SpecError(
                f"outputs.{modality}.output_projector is missing: the generator {outputs.generator.name!r} is "
                f"conditioned on {generator.condition_spec}, which an output projector (mlp, transformer-queries) "
                "makes from the signal states."
            )
        entry = registry.get("output_projectors", outputs.output_projector.name)
        output_projector = make(
            f"outputs.{modality}.output_projector",
            entry,
            OutputProjector,
            llm_dim=llm.hidden_size,
            condition_spec=generator.condition_spec,
            num_signal_tokens=outputs.signal_tokens,
            params=outputs.output_projector.params,
        )
        if output_projector.condition_spec != generator.condition_spec:
            raise DimensionError(
                f"outputs.{modality}.output_projector ({outputs.output_projector.name}) produces "
                f"{output_projector.condition_spec} but the generator {outputs.generator.name!r} takes "
                f"{generator.condition_spec}; the projector must take its shape from the condition_spec it is given."
            )
        output_projectors[modality] = output_projector
    bar.close()
    model = MMLLM(spec, llm, encoders, projectors, sources, output_projectors, generators)
    model.set_trainable("llm", spec.llm.trainable)
    if spec.llm.peft is not None:  # after the placeholders are added and the LLM frozen: adapters stay trainable
        with _seeded(spec.seed, "llm.peft"):
            apply_peft(model.llm, spec.llm.peft)
        model._frozen.discard("llm")  # train mode reaches the adapters (LoRA dropout)
    for modality, inputs in spec.inputs.items():
        model.set_trainable(f"inputs.{modality}.encoder", inputs.encoder.trainable)
        model.set_trainable(f"inputs.{modality}.projector", inputs.projector.trainable)
    for modality, outputs in spec.outputs.items():
        model.set_trainable(f"outputs.{modality}.generator", False)  # generators stay frozen
        if outputs.output_projector is not None:
            model.set_trainable(f"outputs.{modality}.output_projector", outputs.output_projector.trainable)
    if spec.outputs:  # after the LLM is frozen (and peft froze the base): only the signal rows train in it
        model.set_signal_rows_trainable(any(outputs.train_signal_tokens for outputs in spec.outputs.values()))
    for row in model.parameter_counts():
        logger.info("%s: %d parameters, %d trainable", row.component, row.total, row.trainable)
    return model


def _check_modality(entry: Registration, component: Any, modality: str) -> None:
    """An encoder or generator registered for ``modality`` must say it is for that modality."""
    if component.modality != modality:
        raise PluginError(f"Plugin {entry.plugin!r}: the {entry.label} reports modality {component.modality!r}.")


def _check_text_output(modality: str, outputs: Any) -> None:
    """A text-conditioned generator takes the text between two signal tokens, and no output projector."""
    if outputs.signal_tokens != TEXT_SIGNAL_TOKENS:
        raise SpecError(
            f"outputs.{modality}.signal_tokens is {outputs.signal_tokens}, but the generator {outputs.generator.name!r} "
            f"is conditioned on text: it needs {TEXT_SIGNAL_TOKENS} signal tokens, one opening and one closing the text."
        )
    if outputs.output_projector is not None:
        raise SpecError(
            f"outputs.{modality}.output_projector is set, but the generator {outputs.generator.name!r} is conditioned "
            "on the text between its signal tokens, not on their states; remove output_projector."
        )


@contextlib.contextmanager
def _seeded(seed: int, path: str) -> Iterator[None]:
    """Random init from (spec seed, component path): the same spec rebuilds the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(path.encode()))
        yield
