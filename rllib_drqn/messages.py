"""One place for how the plugin words an error it passes on: a single line, of bounded length.

Errors from RLlib, Tune, gymnasium or pickle arrive with newlines and, at times, pages of
text; the plugin quotes them inside its own one-line messages (which name the value and the
fix), so every module that quotes one uses :func:`one_line`.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_QUOTED_CHARS", "one_line"]

#: A quoted error longer than this is cut (with "..."): the plugin's own words come first.
MAX_QUOTED_CHARS: Final[int] = 300


def one_line(error: BaseException | str, limit: int | None = MAX_QUOTED_CHARS) -> str:
    """``error``'s text with every run of whitespace (newlines included) made one space.

    Args:
        error: An exception or its text.
        limit: Cut to this many characters; ``None`` keeps all (a config error the user must
            read whole, such as ``config.validate()``'s).
    """
    text = " ".join(str(error).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
