"""Deprecation helpers: renamed arguments, arguments that became keyword-only and names that
moved to another module keep working for one release with a ``DeprecationWarning``."""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import warnings
from typing import Any, Callable, Mapping, Sequence, TypeVar

__all__ = ["keyword_only_after", "moved_names", "renamed_argument", "renamed_key",
           "warn_deprecated"]

F = TypeVar("F", bound=Callable[..., Any])


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn_deprecated(message: str, stacklevel: int | None = None) -> None:
    """``warnings.warn(message, DeprecationWarning)`` pointing at the first caller outside
    zf_unet (or ``stacklevel`` frames up)."""
    if stacklevel is None:
        stacklevel, frame = 1, sys._getframe(1)
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
                _PACKAGE + os.sep):
            frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel + 1)


def renamed_argument(new_name: str, new_value: Any, old_name: str, old_value: Any,
                     where: str) -> Any:
    """The value of argument ``new_name``, accepting its deprecated spelling ``old_name``.

    ``None`` means "not given" for both. The old name warns (``DeprecationWarning``); giving
    both raises ``ValueError``."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ValueError(f"{where}: got both {new_name}={new_value!r} and its deprecated alias "
                         f"{old_name}={old_value!r}; pass only {new_name}")
    warn_deprecated(f"{where}: {old_name} is deprecated, use {new_name}={old_value!r}")
    return old_value


def renamed_key(config: Mapping[str, Any], old: str, new: str) -> dict[str, Any]:
    """A copy of a serialized ``config`` with the key ``old`` renamed ``new`` (for configs
    saved before the rename; a ``new`` that is set wins)."""
    out = dict(config)
    if old in out:
        value = out.pop(old)
        if out.get(new) is None:
            out[new] = value
    return out


def keyword_only_after(old_order: Sequence[str]) -> Callable[[F], F]:
    """Decorate a function whose parameters after its positional ones became keyword-only:
    extra positional arguments are still mapped by ``old_order`` (the former positional
    order) with one ``DeprecationWarning`` that names the keywords to use."""

    def wrap(fn: F) -> F:
        params = inspect.signature(fn).parameters.values()
        n_pos = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > n_pos:
                extra = args[n_pos:]
                if len(extra) > len(old_order):
                    raise TypeError(f"{fn.__name__}() takes at most {n_pos + len(old_order)} "
                                    f"positional arguments, got {len(args)}")
                names = list(old_order[:len(extra)])
                for key in names:
                    if key in kwargs:
                        raise TypeError(f"{fn.__name__}() got multiple values for argument "
                                        f"{key!r}")
                warn_deprecated(
                    f"{fn.__name__}(): passing {', '.join(names)} by position is deprecated; "
                    f"pass them as keywords: {', '.join(f'{k}=...' for k in names)}")
                kwargs.update(zip(names, extra))
                args = args[:n_pos]
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return wrap


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for names that moved or were renamed: ``moved`` maps
    each old name of ``module`` to its new home, ``"package.module"`` (same name) or
    ``"package.module:new_name"``; reading one warns and returns the new object."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, _, new = moved[name].partition(":")
        new = new or name
        where = f"{home}.{new}" if new != name else f"{home} ({name})"
        warn_deprecated(f"{module}.{name} is deprecated; use {where}")
        return getattr(importlib.import_module(home), new)

    return __getattr__
