"""What the SDK knows about each model: allowed aspect ratios, durations, image inputs.

Pure data and checks (no I/O). `VideoRequest` applies the spec of its model when it is
known, before anything is sent; an unknown model passes through untouched (a DEBUG log
says so), because APIMart adds models faster than any SDK release.

Where the values come from (the API documentation, ``apimart-api.md``, is thin):

- ``sora-2`` (the documented default) and ``sora-2-pro``: aspect ratios ``16:9`` and
  ``9:16``, exactly the two the documentation lists. Durations: the documentation gives
  only the example ``5`` and says models "reject others with an error"; the set here is
  the union of the lengths Sora 2 is offered in (4, 8, 12 s; 10 and 15 s on gateways)
  and that example: 4, 5, 8, 10, 12, 15. A union, so a length the server takes is not
  refused here; 7 or 999 are. ``sora-2-pro`` also takes ``resolution`` (values not
  documented: any of the shape ``720p``, 144p to 4320p, or ``2K``/``4K``/``8K``).
- ``veo3``: ``16:9``, ``9:16`` and ``1:1`` (the square format users send it, issue #10);
  durations are not documented, so none is refused (None: any positive whole number);
  ``resolution`` (as for ``sora-2-pro``).
- ``Omni-Flash-Ext``: named by the documentation with "its own extra fields such as
  resolution" and nothing else: only the shape checks every request gets (an
  ``aspect_ratio`` is ``W:H``, whole numbers > 0; a ``resolution`` as above).

Every model here accepts ``image_urls`` (the endpoint documents image-to-video, up to
10 MB per image). A value that turns out wrong is overridden without waiting for a
release: ``register_model(ModelSpec(...), replace=True)``; a new model is added the
same way (or simply used: unknown names are sent as given).

A name that differs from a known one only in case or punctuation (``sora2``,
``SORA-2``, ``veo-3``) is refused with "did you mean": such a request would at best be
rejected by the server and at worst run (and bill) on another model than meant, while
no real model name is one keystroke of case or a dash away from a known one. A name
merely close to a known one (``sora-2-por``) is sent, with a WARNING. To send such a
name anyway, register it (`register_model(ModelSpec("sora2"))`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from .errors import ValidationError

__all__ = [
    "ModelName",
    "ModelSpec",
    "check_model_fields",
    "get_model_spec",
    "known_models",
    "register_model",
    "unregister_model",
]

log = logging.getLogger("apimart_async")

#: A model name: the known ones for editors' completion, any other string accepted.
ModelName = Literal["sora-2", "sora-2-pro", "veo3", "Omni-Flash-Ext"] | str
with contextlib.suppress(AttributeError, TypeError):  # read-only on some Pythons
    ModelName.__doc__ = ("A model name: the known ones (``Literal``) for editors' completion; "
                         "any other string is accepted too.")

_RATIO = re.compile(r"[1-9][0-9]{0,3}:[1-9][0-9]{0,3}")


def _frozen_or_none(value: Iterable[Any] | None) -> frozenset[Any] | None:
    return None if value is None else frozenset(value)


def _extra_fields(value: Mapping[str, Iterable[Any] | None]) -> Mapping[str, frozenset[Any] | None]:
    return {str(k): _frozen_or_none(v) for k, v in dict(value).items()}


def _check_spec_name(value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("name", f"must be a non-empty model name, got {value!r}")


@attrs.frozen
class ModelSpec:
    """What one model accepts. None means "not constrained here".

    - `name`: the model name as sent (case-sensitive).
    - `aspect_ratios`: the ``aspect_ratio`` values it takes.
    - `durations`: the ``duration`` values (seconds) it takes.
    - `accepts_images`: whether ``image_urls`` may be given.
    - `max_images`: how many ``image_urls`` at most.
    - `extra_fields`: model-specific fields known to it (passed in `VideoRequest.extra`),
      each with its allowed values (None: any value; for ``resolution``, any of its
      shape, e.g. ``720p``). Fields not listed pass through.
    - `source`: where the values come from, for people reading errors and docs.
    """

    name: str = attrs.field(validator=lambda _, __, v: _check_spec_name(v))
    aspect_ratios: frozenset[str] | None = attrs.field(
        default=None, converter=_frozen_or_none, kw_only=True)
    durations: frozenset[int] | None = attrs.field(
        default=None, converter=_frozen_or_none, kw_only=True)
    accepts_images: bool = attrs.field(default=True, kw_only=True)
    max_images: int | None = attrs.field(default=None, kw_only=True)
    extra_fields: Mapping[str, frozenset[Any] | None] = attrs.field(
        factory=dict, converter=_extra_fields, hash=False, kw_only=True)
    source: str = attrs.field(default="", kw_only=True)



_SORA_DURATIONS = (4, 5, 8, 10, 12, 15)
_SORA_SOURCE = ("aspect ratios: the API documentation; durations: Sora 2's offered lengths "
                "and the documented example 5")

_BUILTIN = (
    ModelSpec("sora-2", aspect_ratios=("16:9", "9:16"), durations=_SORA_DURATIONS,
              source=_SORA_SOURCE),
    ModelSpec("sora-2-pro", aspect_ratios=("16:9", "9:16"), durations=_SORA_DURATIONS,
              extra_fields={"resolution": None}, source=_SORA_SOURCE),
    ModelSpec("veo3", aspect_ratios=("16:9", "9:16", "1:1"), extra_fields={"resolution": None},
              source="aspect ratios: 16:9 and 9:16 documented, 1:1 as used (issue #10); "
                     "durations not documented"),
    ModelSpec("Omni-Flash-Ext", extra_fields={"resolution": None},
              source="named by the API documentation, no constraints documented"),
)

_lock = threading.Lock()
_registry: dict[str, ModelSpec] = {spec.name: spec for spec in _BUILTIN}


def register_model(spec: ModelSpec, *, replace: bool = False) -> None:
    """Make `spec` known, process-wide: requests for its model are checked against it.

    Registering a name that is known already needs `replace=True` (to override a
    built-in value that proved wrong); else `ValueError`.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model takes a ModelSpec, got {type(spec).__name__}")
    with _lock:
        if spec.name in _registry and not replace:
            raise ValueError(f"model {spec.name!r} is known already; pass replace=True "
                             "to override its spec")
        _registry[spec.name] = spec


def unregister_model(name: str) -> ModelSpec | None:
    """Forget model `name` (built-in or registered); returns its spec, if it was known.
    Requests for it then pass through unchecked."""
    with _lock:
        return _registry.pop(name, None)


def get_model_spec(name: str) -> ModelSpec | None:
    """The spec of model `name`, or None when it is not known."""
    return _registry.get(name)


def known_models() -> tuple[str, ...]:
    """The names of the models known now, sorted."""
    return tuple(sorted(_registry))


def _fold(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _allowed(values: Iterable[Any]) -> str:
    return ", ".join(repr(v) for v in sorted(values, key=lambda v: (str(type(v)), v)))


def check_model_fields(
    model: str,
    *,
    duration: int | None,
    aspect_ratio: str | None,
    image_count: int,
    extra: Mapping[str, Any] | None,
) -> None:
    """Check a request's fields against its model's spec; raise `ValidationError`
    naming the field, the value and the allowed values."""
    spec = _registry.get(model)
    if spec is None:
        _unknown(model, aspect_ratio)
        return
    if aspect_ratio is not None and spec.aspect_ratios is not None \
            and aspect_ratio not in spec.aspect_ratios:
        raise ValidationError("aspect_ratio", f"{aspect_ratio!r} is not supported by model "
                              f"{model!r}; allowed: {_allowed(spec.aspect_ratios)}")
    _check_ratio_shape(aspect_ratio)
    if duration is not None and spec.durations is not None and duration not in spec.durations:
        raise ValidationError("duration", f"{duration!r} is not supported by model {model!r}; "
                              f"allowed: {_allowed(spec.durations)} (seconds)")
    if image_count and not spec.accepts_images:
        raise ValidationError("image_urls", f"model {model!r} does not take image inputs")
    if spec.max_images is not None and image_count > spec.max_images:
        raise ValidationError("image_urls", f"has {image_count} images; model {model!r} takes "
                              f"at most {spec.max_images}")
    for name, value in (extra or {}).items():
        allowed = spec.extra_fields.get(name)
        if allowed is not None and not _member(value, allowed):
            raise ValidationError(f"extra[{name!r}]", f"{value!r} is not supported by model "
                                  f"{model!r}; allowed: {_allowed(allowed)}")
        if allowed is None and name in spec.extra_fields and name in _SHAPES:
            shape, like = _SHAPES[name]
            if not isinstance(value, str) or not shape(value):
                raise ValidationError(f"extra[{name!r}]", f"must be {like}, got {value!r}")


def _check_ratio_shape(aspect_ratio: str | None) -> None:
    if aspect_ratio is not None and not _RATIO.fullmatch(aspect_ratio):
        raise ValidationError("aspect_ratio", "must look like 'W:H' with whole numbers > 0 "
                              f"(e.g. '16:9'), got {aspect_ratio!r}")


def _resolution(value: str) -> bool:
    match = re.fullmatch(r"([1-9][0-9]{2,3})[pP]|([248])[kK]", value)
    return match is not None and (match.group(2) is not None
                                  or 144 <= int(match.group(1)) <= 4320)


# Fields a spec lists with "any value" whose values still have a shape: the API does not
# document the values (``resolution``: "its own extra fields such as resolution"), so a
# set could refuse one the server takes; a shape catches the typos (9999p, 1080, hd)
# without that. A spec listing a set of values uses the set.
_SHAPES = {
    "resolution": (_resolution, "a video resolution like '720p' or '1080p' (144p to 4320p), "
                                "or '2K', '4K', '8K'"),
}


def _member(value: object, allowed: frozenset[Any]) -> bool:
    try:
        return value in allowed
    except TypeError:  # unhashable (a list, an object): not one of the allowed values
        return False


def _unknown(model: str, aspect_ratio: str | None) -> None:
    folded = _fold(model)
    same = [name for name in _registry if _fold(name) == folded]
    if same:
        raise ValidationError(
            "model", f"{model!r} is not a known model; did you mean {same[0]!r}? (to send "
            f"this name as it is, register it: register_model(ModelSpec({model!r})))")
    # Here, not at the top: difflib is ~150 KB of every process's memory, and only
    # a model name the SDK does not know needs it.
    import difflib

    close = difflib.get_close_matches(model, list(_registry), n=1, cutoff=0.85)
    if close:
        log.warning("model %r is not known to this SDK (did you mean %r?): sent unchecked",
                    model, close[0])
    else:
        log.debug("model %r is not known to this SDK: sent unchecked", model)
    _check_ratio_shape(aspect_ratio)
