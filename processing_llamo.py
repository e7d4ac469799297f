"""Processor for LLaMo: tokenizer + chat template + molecule featurization (SMILES -> graph tensors)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from rdkit import Chem
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import logging


try:  # loaded as remote code (a package next to the weights)
    from .configuration_llamo import GRAPH_INPUT_NAMES
    from .featurization_llamo import MAX_ATOMS, MAX_SMILES_LENGTH, MoleculeGraph, collate_molecule_graphs, featurize_smiles
except ImportError:  # imported as a plain module from the repository root
    from configuration_llamo import GRAPH_INPUT_NAMES
    from featurization_llamo import MAX_ATOMS, MAX_SMILES_LENGTH, MoleculeGraph, collate_molecule_graphs, featurize_smiles


logger = logging.get_logger(__name__)

DEFAULT_SYSTEM_MESSAGE = "The following is a conversation between a curious human and AI assistant."

# LLaMo's Llama-2-chat layout: system message and first user turn in one [INST] block, one [INST] block per later
# user turn, every answer closed by EOS. Answers are marked with {% generation %} for assistant-only losses.
# Content is a string or a list of typed items (molecules are `<graph>` text items by then), joined with spaces.
DEFAULT_CHAT_TEMPLATE = (
    "{%- macro content_text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}{%- if not loop.first %} {% endif -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = content_text(messages[0]['content']) -%}{%- set conversation = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '" + DEFAULT_SYSTEM_MESSAGE + "' -%}{%- set conversation = messages -%}"
    "{%- endif -%}"
    "{%- for message in conversation -%}"
    "{%- if message['content'] is not string and message['content'] | selectattr('type', 'equalto', 'molecule') | list -%}"
    "{{ raise_exception('LLaMo chat content must be text here: molecule items need LlamoProcessor.apply_chat_template, "
    "or pipeline(\\'molecule-text-to-text\\', model=..., trust_remote_code=True) instead of text-generation') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first -%}"
    "{{ bos_token }}[INST] <<SYS>>\n{{ system_message }}\n<</SYS>>\n\n{{ content_text(message['content']) | trim }} [/INST]"
    "{%- else -%}"
    "{{ bos_token }}[INST] {{ content_text(message['content']) | trim }} [/INST]"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}{{ ' ' + (content_text(message['content']) | trim) + eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('LLaMo conversations have system, user and assistant turns, got: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# sha256 of the default templates of earlier LLaMo releases (saved next to their weights), which read string
# content only (`message['content'] | trim`): the processor joins content items into a string for them.
LEGACY_CHAT_TEMPLATE_SHA256 = frozenset({"ad29bff63575105b696a380bc9d9509493f5bbb3a4fb6a9fc639d520e8557d79"})


class LlamoProcessor(ProcessorMixin):
    r"""
    Turns prompts and SMILES into LLaMo's inputs.

    Each `<graph>` placeholder in the text stands for one molecule (in order) and is replaced by the molecule's
    SMILES as shown to the language model (canonical, non-isomeric, at most 128 characters, as in LLaMo) followed
    by the graph-token slots that the model fills with graph vectors. The molecules themselves are featurized
    here, once, into flat tensors (OGB atom/bond features, functional-group descriptors, molecule indices).

    Args:
        tokenizer: the language model's tokenizer; it must know `graph_token` as a single special token.
        chat_template (`str`, *optional*): Jinja template (LLaMo's Llama-2-chat layout by default).
        graph_token (`str`, defaults to `"<graph>"`): placeholder in prompts and slot token in `input_ids`.
        num_graph_tokens (`int` or `None`, defaults to 28): slots per molecule (`LlamoConfig.num_graph_tokens`);
            `None` gives one slot per atom (per-atom MLP projectors), 0 gives none (text-only model).
        smiles_in_prompt (`bool`, defaults to `True`): write the SMILES text before the slots.
        smiles_max_length (`int` or `None`, defaults to 128): truncate that SMILES text.
        isomeric_smiles (`bool`, defaults to `False`): keep stereo and isotopes in that SMILES text.
        piecewise_tokenization (`bool`, defaults to `False`): tokenize like the original LLaMo code, for exact
            parity with its released weights: the prompt is cut at each molecule's graph slots, every text piece
            is stripped of surrounding whitespace and tokenized on its own (so each gets the tokenizer's
            word-start prefix), a leading BOS is its own token, and the ids are concatenated. Off: the expanded
            prompt is tokenized in one call.
        max_input_smiles_length (`int` or `None`, defaults to 20,000): longest SMILES accepted (characters); longer
            input raises `ValueError` before RDKit parses it.
        max_atoms (`int` or `None`, defaults to 2,000): largest molecule accepted (atoms); larger ones raise
            `ValueError` before they are featurized (RDKit's SMILES writer overflows the stack at ~19,000 atoms).
    """

    def __init__(
        self,
        tokenizer=None,
        chat_template: str | None = None,
        graph_token: str = "<graph>",
        num_graph_tokens: int | None = 28,
        smiles_in_prompt: bool = True,
        smiles_max_length: int | None = 128,
        isomeric_smiles: bool = False,
        piecewise_tokenization: bool = False,
        max_input_smiles_length: int | None = MAX_SMILES_LENGTH,
        max_atoms: int | None = MAX_ATOMS,
    ):
        if tokenizer is None:
            raise ValueError("LlamoProcessor needs a tokenizer")
        graph_token_id = tokenizer.convert_tokens_to_ids(graph_token)
        if graph_token_id is None or graph_token_id == tokenizer.unk_token_id or graph_token not in tokenizer.all_special_tokens:
            raise ValueError(
                f"the tokenizer has no special token {graph_token!r}: add it first, e.g. "
                f"tokenizer.add_special_tokens({{'additional_special_tokens': [{graph_token!r}]}}), and resize the model's embeddings"
            )
        if num_graph_tokens is not None and num_graph_tokens < 0:
            raise ValueError(f"num_graph_tokens must be >= 0 or None (one per atom), got {num_graph_tokens}")
        self.graph_token = graph_token
        self.graph_token_id = graph_token_id
        self.num_graph_tokens = num_graph_tokens
        self.smiles_in_prompt = smiles_in_prompt
        self.smiles_max_length = smiles_max_length
        self.isomeric_smiles = isomeric_smiles
        self.piecewise_tokenization = piecewise_tokenization
        self.max_input_smiles_length = max_input_smiles_length
        self.max_atoms = max_atoms
        super().__init__(tokenizer, chat_template=chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE)

    @property
    def model_input_names(self) -> list[str]:
        """The inputs this processor returns, as Qwen2-VL's processor lists its extra ones: the tokenizer's (the
        base class's list), then the graph inputs, which a text-only processor (`num_graph_tokens=0`) never
        returns."""
        graph_inputs = list(GRAPH_INPUT_NAMES) if self.num_graph_tokens != 0 else []
        return list(super().model_input_names) + graph_inputs

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, leaving the processor as it was. Saving a processor registered for an
        auto class writes `auto_map` to processor_config.json (AutoProcessor reads it) by setting it on the processor
        itself, so `to_dict()` gained `auto_map` after saving and no longer equalled the dict of the processor loaded
        back (loading drops it). transformers removes what it sets on the tokenizer the same way."""
        had_auto_map = "auto_map" in self.__dict__
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if not had_auto_map:
                self.__dict__.pop("auto_map", None)

    def featurize(self, smiles: str) -> tuple[MoleculeGraph | None, str]:
        """Parse one SMILES: its graph (None for a text-only model) and the SMILES text shown in the prompt.
        Raises `ValueError` for invalid or empty SMILES. Results are cached (bounded LRU, read-only arrays)."""
        return featurize_smiles(
            smiles,
            with_graph=self.num_graph_tokens != 0,
            isomeric=self.isomeric_smiles,
            max_length=self.smiles_max_length,
            max_smiles_length=getattr(self, "max_input_smiles_length", MAX_SMILES_LENGTH),
            max_atoms=getattr(self, "max_atoms", MAX_ATOMS),
        )

    def molecule_prompt(self, graph: MoleculeGraph | None, shown_smiles: str) -> str:
        """What one `<graph>` placeholder becomes: SMILES text, then one slot token per graph token."""
        slots = self.num_graph_tokens if self.num_graph_tokens is not None else graph.num_atoms
        return (shown_smiles if self.smiles_in_prompt else "") + self.graph_token * slots

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        smiles: str | Chem.Mol | Sequence[str | Chem.Mol] | Sequence[Sequence[str | Chem.Mol]] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """
        Tokenize prompts and featurize their molecules.

        Args:
            text: one prompt or a batch; each `<graph>` placeholder stands for one molecule.
            smiles: the molecules, in placeholder order: one SMILES string (or RDKit `Mol`), a flat list over the
                whole batch, or one list per prompt.
            **kwargs: passed to the tokenizer (`padding`, `padding_side`, `truncation`, `max_length`,
                `return_tensors`, ...). Prompts that already start with the BOS token (rendered by
                `apply_chat_template(..., tokenize=False)`) get no second one unless `add_special_tokens` is given.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, when there are molecules, the graph inputs
            `graph_node_features`, `graph_edge_index`, `graph_edge_features`, `graph_node_batch`,
            `graph_motif_features` and `graph_motif_batch`.
        """
        for modality in ("images", "videos", "audio"):
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"LlamoProcessor reads text and molecules (SMILES), not {modality}")
        if text is None:
            raise ValueError("LlamoProcessor needs `text` (prompts with a <graph> placeholder per molecule)")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(prompt, str) for prompt in texts):
            raise ValueError(f"`text` must be a string or a list of strings, got {type(text).__name__}")
        smiles_per_text = self._match_smiles_to_texts(texts, smiles)
        return_tensors = kwargs.pop("return_tensors", None)
        # Requested by `apply_chat_template(..., return_assistant_tokens_mask=True)` to realign the answer spans.
        return_offsets = kwargs.pop("return_text_replacement_offsets", False)

        graphs: list[MoleculeGraph] = []
        replacements_per_text = []
        index = 0
        for text_index, molecules in enumerate(smiles_per_text):
            replacements = []
            for molecule in molecules:
                try:
                    graph, shown_smiles = self.featurize(molecule)
                except ValueError as error:
                    raise ValueError(f"molecule {index} (text {text_index}): {error}") from None
                replacements.append(self.molecule_prompt(graph, shown_smiles))
                if graph is not None:
                    graphs.append(graph)
                index += 1
            replacements_per_text.append(replacements)
        expanded = [self._expand_placeholders(prompt, replacements) for prompt, replacements in zip(texts, replacements_per_text)]

        expanded_texts = [text for text, _ in expanded]
        bos_token = self.tokenizer.bos_token
        if "add_special_tokens" not in kwargs and bos_token and all(text.startswith(bos_token) for text in expanded_texts):
            # The chat template wrote the BOS already (as transformers' own apply_chat_template assumes).
            kwargs["add_special_tokens"] = False
        if self.piecewise_tokenization:
            text_inputs = self._tokenize_piecewise(expanded_texts, **kwargs)
        else:
            text_inputs = self.tokenizer(expanded_texts, **kwargs)
        self._check_slots(text_inputs["input_ids"], graphs, smiles_per_text)
        data = dict(text_inputs)
        if graphs:
            data.update(collate_molecule_graphs(graphs))
        features = BatchFeature(data=data, tensor_type=return_tensors)
        if return_offsets:  # after the tensor conversion: these stay Python objects
            features["text_replacement_offsets"] = [offsets for _, offsets in expanded]
        return features

    def _tokenize_piecewise(
        self,
        texts: list[str],
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_offsets_mapping: bool = False,
        **kwargs,
    ) -> dict[str, list]:
        """`piecewise_tokenization`: the original's `[BOS] + tok(piece) + slots + tok(piece) ...`, then truncation and
        padding as the tokenizer would do them. Offsets (for assistant masks) point into the expanded text."""
        bos_token, bos_token_id = self.tokenizer.bos_token, self.tokenizer.bos_token_id
        width = len(self.graph_token)
        batch_ids, batch_offsets = [], []
        for text in texts:
            ids, offsets, start = [], [], 0
            if bos_token is not None and text.startswith(bos_token):  # the template's BOS, kept apart as the original did
                ids.append(bos_token_id)
                offsets.append((0, len(bos_token)))
                start = len(bos_token)
            elif add_special_tokens and bos_token_id is not None:
                ids.append(bos_token_id)
                offsets.append((0, 0))
            while (run_start := text.find(self.graph_token, start)) != -1:  # each run of slot tokens
                run_end = run_start
                while text.startswith(self.graph_token, run_end):
                    run_end += width
                self._tokenize_piece(text, start, run_start, ids, offsets, return_offsets_mapping, kwargs)
                ids += [self.graph_token_id] * ((run_end - run_start) // width)
                offsets += [(position, position + width) for position in range(run_start, run_end, width)]
                start = run_end
            self._tokenize_piece(text, start, len(text), ids, offsets, return_offsets_mapping, kwargs)
            if truncation not in (None, False, "do_not_truncate") and max_length is not None and len(ids) > max_length:
                keep = slice(len(ids) - max_length, None) if self.tokenizer.truncation_side == "left" else slice(max_length)
                ids, offsets = ids[keep], offsets[keep]
            batch_ids.append(ids)
            batch_offsets.append(offsets)

        padded = self.tokenizer.pad(
            {"input_ids": batch_ids},
            padding=padding,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_attention_mask=return_attention_mask,
        )
        data = dict(padded)
        if return_offsets_mapping:  # padding positions get empty spans, as the tokenizer gives them
            left = (padding_side or self.tokenizer.padding_side) == "left"
            data["offset_mapping"] = []
            for padded_ids, offsets in zip(data["input_ids"], batch_offsets):
                filler = [(0, 0)] * (len(padded_ids) - len(offsets))
                data["offset_mapping"].append(filler + offsets if left else offsets + filler)
        return data

    def _tokenize_piece(
        self, text: str, start: int, end: int, ids: list, offsets: list, with_offsets: bool, kwargs: dict
    ) -> None:
        """Tokenize `text[start:end]`, stripped, without special tokens; append its ids and absolute offsets."""
        piece = text[start:end]
        stripped = piece.strip()
        if not stripped:
            return
        shift = start + len(piece) - len(piece.lstrip())
        encoded = self.tokenizer(stripped, add_special_tokens=False, return_offsets_mapping=with_offsets, **kwargs)
        ids += encoded["input_ids"]
        if with_offsets:
            offsets += [(shift + begin, shift + finish) for begin, finish in encoded["offset_mapping"]]
        else:
            offsets += [(0, 0)] * len(encoded["input_ids"])

    def _expand_placeholders(self, prompt: str, replacements: list[str]) -> tuple[str, list[dict]]:
        """Replace the placeholders of one prompt in order; also report where each one went, in the format of
        `ProcessorMixin.get_text_with_replacements` (used to realign assistant masks)."""
        pieces = prompt.split(self.graph_token)
        expanded, offsets, position = pieces[0], [], len(pieces[0])
        for replacement, following in zip(replacements, pieces[1:]):
            offsets.append(
                {
                    "type": "molecule",
                    "span": (position, position + len(self.graph_token)),
                    "new_span": (len(expanded), len(expanded) + len(replacement)),
                    "text": self.graph_token,
                    "replacement": replacement,
                }
            )
            expanded += replacement + following
            position += len(self.graph_token) + len(following)
        return expanded, offsets

    def _match_smiles_to_texts(self, texts: list[str], smiles) -> list[list[str]]:
        """Group the SMILES by prompt, checking them against the `<graph>` placeholders."""
        counts = [prompt.count(self.graph_token) for prompt in texts]
        if smiles is None:
            smiles = []
        elif isinstance(smiles, (str, Chem.Mol)):
            smiles = [smiles]
        smiles = [[as_smiles(s) for s in item] if isinstance(item, (list, tuple)) else as_smiles(item) for item in smiles]
        if smiles and all(isinstance(item, (list, tuple)) for item in smiles):
            if len(smiles) != len(texts):
                raise ValueError(f"got {len(smiles)} lists of SMILES for {len(texts)} texts")
            grouped = [list(item) for item in smiles]
            for text_index, (count, group) in enumerate(zip(counts, grouped)):
                if count != len(group):
                    raise ValueError(
                        f"text {text_index} has {count} {self.graph_token} placeholder(s) but {len(group)} SMILES were given for it"
                    )
        else:
            if len(smiles) != sum(counts):
                raise ValueError(
                    f"the text has {sum(counts)} {self.graph_token} placeholder(s) but {len(smiles)} SMILES were given: "
                    f"put one {self.graph_token} where each molecule goes"
                )
            starts = [sum(counts[:i]) for i in range(len(counts))]
            grouped = [smiles[start : start + count] for start, count in zip(starts, counts)]
        return grouped

    def _check_slots(self, input_ids, graphs: list[MoleculeGraph], smiles_per_text: list[list[str]]) -> None:
        """Every molecule must keep all its slots after tokenization (truncation can cut them)."""
        graph_iter = iter(graphs)
        for text_index, (ids, molecules) in enumerate(zip(input_ids, smiles_per_text)):
            expected = 0
            for _ in molecules:
                if self.num_graph_tokens is None:
                    expected += next(graph_iter).num_atoms
                else:
                    expected += self.num_graph_tokens
            found = sum(1 for token in ids if token == self.graph_token_id)
            if found != expected:
                raise ValueError(
                    f"text {text_index} has {found} graph-token slots after tokenization but its molecules need {expected}: "
                    "the prompt was truncated inside its graph tokens (raise max_length), or the text itself contains "
                    f"the slot token {self.graph_token!r}"
                )

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """Render a conversation whose turns may hold molecules, in transformers' message formats.

        Messages are dicts, dataclasses or pydantic models (a conversation may also be an object with `.messages`);
        content is a string or a list of typed items. Each `{"type": "molecule", "smiles": ...}` item becomes, in
        place, the text item `{"type": "text", "text": "<graph>"}`, so any template written for typed content
        renders what the tokenizer would render for that text; when tokenizing, the SMILES are featurized.
        Templates that read string content only (those saved by earlier LLaMo releases, and most LLMs' own:
        `reads_typed_content`) get the items joined with spaces first, as those releases did."""
        batched = (
            isinstance(conversation, (list, tuple))
            and bool(conversation)
            and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
        )
        conversations = conversation if batched else [conversation]
        template = chat_template if chat_template is not None else self.chat_template
        join_items = isinstance(template, str) and not self._reads_typed_content(template)
        rendered, smiles = [], []
        for messages in conversations:
            molecules: list[str] = []
            messages = plain_data(getattr(messages, "messages", messages))
            rendered.append(
                [self._message_with_placeholders(message, index, molecules, join_items) for index, message in enumerate(messages)]
            )
            smiles.append(molecules)
        if kwargs.get("tokenize", False):
            processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
            if any(smiles):
                if processor_kwargs.get("smiles") is not None:
                    raise ValueError(
                        "give the molecules either as {'type': 'molecule', 'smiles': ...} content items or as "
                        "processor_kwargs={'smiles': [...]} (one per <graph> in string content), not both"
                    )
                processor_kwargs["smiles"] = smiles if batched else smiles[0]
            # Generation prompts are left-padded: a decoder-only model continues each row from its last token.
            if (kwargs.get("add_generation_prompt") or kwargs.get("continue_final_message")) and "padding_side" not in kwargs:
                processor_kwargs.setdefault("padding_side", "left")
            kwargs["processor_kwargs"] = processor_kwargs
        return super().apply_chat_template(rendered if batched else rendered[0], chat_template=chat_template, **kwargs)

    def _reads_typed_content(self, template: str) -> bool:
        """Whether `template` renders content given as typed items (transformers' convention) rather than only
        strings. Many LLMs' own templates read strings only (`'...' + message['content']`, or Qwen3's
        `content if content is string else ''`), and LLaMo's releases did too: they get the items joined, or they
        would drop the text silently. Decided once per template by rendering a probe conversation."""
        cache = self.__dict__.setdefault("_typed_content_templates", {})
        if template not in cache:
            if hashlib.sha256(template.encode()).hexdigest() in LEGACY_CHAT_TEMPLATE_SHA256:
                cache[template] = False
            else:
                probe = [
                    {"role": "user", "content": [{"type": "text", "text": "llamo-probe-question"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "llamo-probe-answer"}]},
                ]
                try:
                    text = self.tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False)
                except Exception:  # a template that fails on lists reads strings
                    text = ""
                # both texts rendered as text, not as the printed list (`[{'type': 'text', ...}]`)
                cache[template] = "llamo-probe-question" in text and "llamo-probe-answer" in text and "'type'" not in text
        return cache[template]

    def _check_message_text(self, text: str, index: int) -> None:
        """Refuse special-token strings in message text: rendered into the prompt they would be read as the real
        tokens, so `</s><s>[INST] ...` in a question could end the turn and forge another (template injection).
        The `<graph>` placeholder is the one special token a message may hold."""
        if not isinstance(text, str):
            return
        for token in self.tokenizer.all_special_tokens:
            if token and token != self.graph_token and token in text:
                raise ValueError(
                    f"message {index} contains the special token {token!r}: message text cannot hold the tokenizer's "
                    "special tokens (they would act as real ones and could forge conversation turns); remove or "
                    "rewrite it"
                )

    def _message_with_placeholders(self, message: Any, index: int, molecules: list[str], join_items: bool) -> dict:
        """The message with its molecule items replaced by `<graph>` text items (their SMILES go to `molecules`)."""
        if not isinstance(message, dict):
            raise TypeError(f"message {index}: chat messages are dicts, dataclasses or pydantic models, got {message!r}")
        content = message.get("content")
        if content is None or isinstance(content, str):
            self._check_message_text(content, index)
            return message
        items = []
        for item in content:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                self._check_message_text(item.get("text"), index)
                items.append(item)
            elif kind == "molecule":
                if not isinstance(item.get("smiles"), (str, Chem.Mol)):
                    raise ValueError(f"message {index}: a molecule item needs a 'smiles' string (or RDKit Mol), got {item!r}")
                molecules.append(as_smiles(item["smiles"]))
                items.append({"type": "text", "text": self.graph_token})
            else:
                raise ValueError(f"message {index}: LLaMo content items are 'text' or 'molecule', got {item!r}")
        if join_items:
            return {**message, "content": " ".join(item["text"] for item in items)}
        return {**message, "content": items}


def plain_data(value: Any) -> Any:
    """Message objects (dataclasses, pydantic models) and the items inside them as dicts and lists."""
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain_data(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    return value


def as_smiles(molecule: str | Chem.Mol) -> str:
    """A SMILES string for a SMILES string or an RDKit `Mol` (isomeric; the processor decides what the LLM sees)."""
    if isinstance(molecule, Chem.Mol):
        if molecule.GetNumAtoms() == 0:
            raise ValueError("an RDKit Mol with no atoms is not a molecule")
        return Chem.MolToSmiles(molecule)
    if not isinstance(molecule, str):
        raise ValueError(f"molecules are SMILES strings or RDKit Mol objects, got {type(molecule).__name__}")
    return molecule


LlamoProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["LlamoProcessor", "DEFAULT_CHAT_TEMPLATE", "DEFAULT_SYSTEM_MESSAGE"]
