"""qwen_backends.thinking: the parts not covered through chat and the backends."""

from __future__ import annotations


def test_longest_partial_suffix_matches_its_definition() -> None:
    import random

    from qwen_backends.thinking import longest_partial_suffix

    def by_definition(text: str, patterns: tuple[str, ...]) -> int:
        sizes = [
            size
            for pattern in patterns
            for size in range(1, len(pattern))
            if size <= len(text) and text.endswith(pattern[:size])
        ]
        return max(sizes, default=0)

    chooser = random.Random(0)
    for _ in range(20_000):
        patterns = tuple(
            "".join(chooser.choice("ab<") for _ in range(chooser.randint(1, 5)))
            for _ in range(chooser.randint(1, 4))
        )
        text = "".join(chooser.choice("ab<c") for _ in range(chooser.randint(0, 8)))
        assert longest_partial_suffix(text, patterns) == by_definition(text, patterns)
    stops = tuple(f"<<stop marker {i:04d}>>" for i in range(1_000))
    assert longest_partial_suffix("some text <<stop mar", stops) == len("<<stop mar")
    assert longest_partial_suffix("some text", stops) == 0
