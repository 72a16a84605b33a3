"""Run a fuzz target under atheris (coverage-guided), or with a bounded
random-mutation loop where atheris is not installed (`--random N`)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

SEEDS = [
    b"\x00\x03\x81\x85abcd\x29\x07\x0f\x08\x0e",  # masked "Hello"
    b"\x01\x02\xc1\x81abcd\x00",
    b"\x00\x00\x88\x82abcd\x62\xea",
    b"\x00\x05\x01\x83abcd\x00\x00\x00\x80\x80abcd",
    b"\x05permessage-deflate; client_max_window_bits\n\x04chat, superchat",
    b"\x83dGhlIHNhbXBsZSBub25jZQ==\n\x8412",
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(4)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 12))
        elif op == 2 and buf:
            del buf[pos:pos + rng.randint(1, 8)]
        else:
            buf[pos:pos] = rng.choice(SEEDS)
    return bytes(buf)


def random_loop(check: Callable[[bytes], None], runs: int, seconds: float, seed: int = 0) -> int:
    """Call check() on up to `runs` mutated inputs within `seconds`; return how many ran."""
    rng = random.Random(seed)
    corpus = list(SEEDS)
    deadline = time.monotonic() + seconds
    done = 0
    while done < runs and time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(corpus))
        check(data)
        if len(corpus) < 512 and rng.random() < 0.05:
            corpus.append(data)
        done += 1
    return done


def run(check: Callable[[bytes], None], argv: list[str]) -> None:
    if "--random" in argv:
        runs = int(argv[argv.index("--random") + 1])
        seconds = float(argv[argv.index("--seconds") + 1]) if "--seconds" in argv else 10.0
        print(f"{random_loop(check, runs, seconds)} inputs, no failure")
        return
    import atheris

    _instrument(atheris, "asgiws.websocket")
    atheris.Setup(argv, check)
    atheris.Fuzz()


def _instrument(atheris: object, package: str) -> None:
    """Coverage for the codec only (instrumenting everything costs a minute)."""
    import inspect

    for name, module in list(sys.modules.items()):
        if not name.startswith(package):
            continue
        for obj in vars(module).values():
            functions = [obj] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                functions = [f for f in vars(obj).values() if inspect.isfunction(f)]
            for func in functions:
                if getattr(func, "__module__", None) == name:
                    atheris.instrument_func(func)  # type: ignore[attr-defined]
