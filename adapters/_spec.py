"""What an adapter declares about its model, as data: a ``Spec`` and the names of its steps.

A ``Spec`` is the registry entry of one adapter (``_lifecycle.register(spec)``
returns the adapter itself): its towers and the role of each (vision, language,
action expert), the phases and token kinds its labels use, its attention
sources (``sources/``), how to name the tower of a captured call and how to
lay out a vision tower's tokens and the language model's prompt. Labelling
(``_labels``) reads all of that from here and knows no model.
"""
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

from getlocal.maps import TokenLayout

from ._labels import PromptLayout, image_layout

#: The phase of a step that runs the vision towers only.
ENCODE = "encode"


class Steps(NamedTuple):
    """How the passes of a language model are labelled: the pass over the whole prompt, each later step,
    the kind of the tokens each step adds, and of the tokens before them (``collect(state_tokens=)``), if any."""

    prompt: str
    step: str
    added: str
    state: Optional[str] = None


#: ``generate()``: a prefill pass over the prompt, then one decode step per generated token.
GENERATE = Steps("prefill", "decode", "generated")
#: Pi0's flow matching: a prefix pass, then one denoise step of the action expert per flow step.
DENOISE = Steps("prefix", "denoise", "action", state="state")
#: The kinds labelling itself writes into language layouts: a prompt it cannot lay out, and masked positions.
LABEL_KINDS = ("context", "padding")


class Spec:
    """The model knowledge of one adapter, as data.

    ``vision_towers``, ``language_towers``, ``expert_towers``: the towers the
    adapter writes, by role (an expert tower's calls are ``expert_steps``'
    steps; a language tower's are ``steps``'); ``kinds``: the token kinds its
    layouts use; ``sources``: the attention it captures (``sources.timm.TimmAttention``, ...);
    ``tower(owner, path, modules)``: the tower of a captured call;
    ``vision_layout(path, modules, length)``: the tokens of a vision call;
    ``prompt_layout(length, vision entries, batch, options)``: the language model's prompt;
    ``options``: the labelling options ``collect`` takes (``'cameras'``, ``'state_tokens'``);
    ``refuses(owned)``: given ``{path: module}`` of the model's modules that the
    sources own, why the model is not one this adapter labels (a sentence naming
    the way out), or None; the default accepts any model that holds one.
    ``calls(entries, names, options)``: for attention that one owner computes for
    every layer (SmolVLA's one function), where ``tower`` returns None: sets those
    entries' tower, layer, path and ``cross`` from their order and shapes
    (``names``: ``{id(module): (path, {path: module} of its root)}``); and, for
    every adapter that has it, returns the labelling options with what the model
    says added where ``collect`` was not given them (None): camera names, Pi0's
    state token, what ``prompt_layout`` reads.
    """

    def __init__(self, name: str, *, vision_towers: Sequence[str], sources: Sequence[Any],
                 tower: Callable[[Any, str, Dict[str, Any]], Optional[str]], kinds: Sequence[str],
                 vision_layout: Callable[[str, Dict[str, Any], int], TokenLayout] = image_layout,
                 prompt_layout: Optional[PromptLayout] = None, language_towers: Sequence[str] = (),
                 expert_towers: Sequence[str] = (), options: Sequence[str] = (),
                 steps: Steps = GENERATE, expert_steps: Steps = DENOISE,
                 refuses: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None,
                 calls: Optional[Callable[[list, Dict[int, Any], Dict[str, Any]], Dict[str, Any]]] = None):
        self.name, self.sources, self.tower, self.calls = name, tuple(sources), tower, calls
        self.refuses = refuses or (lambda owned: None)
        self.vision_towers, self.language_towers = tuple(vision_towers), tuple(language_towers)
        self.expert_towers = tuple(expert_towers)
        self.vision_layout, self.prompt_layout, self.options = vision_layout, prompt_layout, tuple(options)
        self.encode, self.steps, self.expert_steps = ENCODE, steps, expert_steps
        self.towers = self.vision_towers + self.language_towers + self.expert_towers  # every name ``tower`` gives
        language = self.language_towers + self.expert_towers
        self.phases = (((ENCODE,) if self.vision_towers else ()) + (steps[:2] if language else ())
                       + (expert_steps[:2] if self.expert_towers else ()))
        added = (((steps.added,) + LABEL_KINDS if language else ())
                 + (tuple(k for k in (expert_steps.state, expert_steps.added) if k) if self.expert_towers else ()))
        self.kinds = tuple(dict.fromkeys(tuple(kinds) + added))

    def owns(self, owner) -> bool:
        """Whether a captured call's owner is one of our attention modules.

        Cache keys are names, and a key freed by one adapter's deactivate can be
        taken by another's function while the cache still holds the first one's maps.
        """
        return any(source.owns(owner) for source in self.sources)
