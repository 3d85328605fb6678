"""Flash taken by the TFLite Micro interpreter and by the kernels of exactly the ops a model uses.

How the figures are obtained (measured on the host, an estimate for a device):
the `tflite-micro` Python package ships TFLM compiled for x86-64 as one shared
object with its symbol table. `measure()` disassembles it (binutils: nm,
readelf, objdump) and builds the call graph the way a linker's
`--gc-sections` sees it: direct calls and jumps, addresses taken
(rip-relative `lea`), and function pointers stored in data (vtables, the
registration structs), followed through the relocation table. Then

- the interpreter core is everything reachable from what firmware calls:
  the `MicroInterpreter` constructor (arena form), `AllocateTensors`,
  `Invoke`, `input`, `output`, its destructor, and the op resolver's lookups;
- an op's kernel is everything reachable from its `Register_<OP>()` and the
  flatbuffer parser its resolver method registers, minus the core.

For a model, flash for code = core + the union of its ops' kernels (a helper
shared by two kernels counts once), summed over function sizes. The result is
stored in `kernel_sizes.json` (regenerate with `python -m
toolchain.backends.tflite_micro.codesize`), so a build needs no binutils.

What the figure is not: Thumb-2 or Xtensa code. It is x86-64 code of the
host build (reference kernels, all type variants of each kernel, TFLM's
compression support compiled in), without libc/libm/libstdc++ (called through
the PLT) and without optimized kernel libraries (CMSIS-NN, ESP-NN), which
replace some reference kernels on a device. TFLM's documentation says the core
runtime "just fits in 16 KB on an Arm Cortex M3"
(https://www.tensorflow.org/lite/microcontrollers); the x86-64 core measured
here is about three times that, so treat the figure as a conservative
estimate, not a bound.
"""

from __future__ import annotations

import bisect
import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("kernel_sizes.json")
# What firmware calls on the interpreter and the resolver (mangled name prefixes in the host build's
# tflite::micro namespace); the constructor is the one that takes the arena as a pointer and a size.
CORE_ROOTS = (
    r"_ZN6tflite5micro16MicroInterpreterC1EPKNS_5ModelERKNS0_15MicroOpResolverEPhm",
    r"_ZN6tflite5micro16MicroInterpreterD1Ev",
    r"_ZN6tflite5micro16MicroInterpreter15AllocateTensorsEv",
    r"_ZN6tflite5micro16MicroInterpreter6InvokeEv",
    r"_ZN6tflite5micro16MicroInterpreter5inputEm",
    r"_ZN6tflite5micro16MicroInterpreter6outputEm",
    r"_ZN6tflite5micro22MicroMutableOpResolverILj\d+EE6FindOp",
    r"_ZN6tflite5micro22MicroMutableOpResolverILj\d+EE15GetOpDataParser",
    r"_ZN6tflite5micro22MicroMutableOpResolverILj\d+EE10AddBuiltin",
)
_REGISTER = re.compile(r"^_ZN6tflite5micro\d+Register_([A-Z0-9_]+)Ev$")
_OPS_RESOLVER_CTOR = re.compile(r"^_ZN6tflite17PythonOpsResolverC[12]Ev$")
_REF = re.compile(r"(?:call|jmp|j[a-z]+)\s+([0-9a-f]+) <|# ([0-9a-f]+) <")
# Ops whose resolver method registers a parser shared with other ops, which the compiler loads once
# (so the call order below does not show it again); from upstream micro_mutable_op_resolver.h.
_SHARED_PARSERS = {"MAX_POOL_2D": "Pool", "L2_POOL_2D": "Pool"}


def shared_object() -> Path:
    from tflite_micro.python.tflite_micro import runtime

    return Path(runtime.__file__).with_name("_runtime.so")


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


class _Binary:
    """Functions, data objects, relocations and references of one ELF shared object."""

    def __init__(self, path: Path) -> None:
        self.functions: dict[int, tuple[int, str]] = {}
        self.objects: dict[int, tuple[int, str]] = {}
        for line in _run("nm", "-S", "--defined-only", str(path)).splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            address, size, kind, name = int(parts[0], 16), int(parts[1], 16), parts[2], parts[3]
            table = self.functions if kind in "TtWw" else self.objects if kind in "VvDdRrBb" else None
            if table is not None:
                table.setdefault(address, (size, name))
        self._function_starts = sorted(self.functions)
        self._object_starts = sorted(self.objects)
        self.relocations: dict[int, int] = {}
        for line in _run("readelf", "-r", "-W", str(path)).splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "R_X86_64_RELATIVE":
                self.relocations[int(parts[0], 16)] = int(parts[3], 16)
            elif len(parts) >= 5 and parts[2] in ("R_X86_64_64", "R_X86_64_GLOB_DAT") and int(parts[3], 16):
                addend = int(parts[-1], 16) if parts[-2] == "+" else 0
                self.relocations[int(parts[0], 16)] = int(parts[3], 16) + addend
        self.references: dict[int, set[int]] = {}
        self.calls_in_order: dict[int, list[int]] = {}
        current = None
        for line in _run("objdump", "-d", "--no-show-raw-insn", str(path)).splitlines():
            if line and not line.startswith(" "):
                match = re.match(r"([0-9a-f]+) <", line)
                current = int(match.group(1), 16) if match else None
                if current is not None:
                    self.references[current] = set()
                    self.calls_in_order[current] = []
                continue
            if current is None:
                continue
            for match in _REF.finditer(line):
                target = int(match.group(1) or match.group(2), 16)
                self.references[current].add(target)
                self.calls_in_order[current].append(target)
        self.by_name = {name: address for address, (_, name) in self.functions.items()}

    @staticmethod
    def _containing(address: int, starts: list[int], table: dict[int, tuple[int, str]]) -> int | None:
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and starts[i] <= address < starts[i] + max(table[starts[i]][0], 1):
            return starts[i]
        return None

    def function_at(self, address: int) -> int | None:
        return self._containing(address, self._function_starts, self.functions)

    def _reached(self, address: int) -> set[int]:
        """Functions a referenced address leads to: the function itself, or those a data object points at."""
        function = self.function_at(address)
        if function is not None:
            return {function}
        start = self._containing(address, self._object_starts, self.objects)
        low, high = (start, start + self.objects[start][0]) if start is not None else (address, address + 8)
        found = set()
        for slot in range(low - low % 8, high, 8):
            target = self.relocations.get(slot)
            if target is not None and (function := self.function_at(target)) is not None:
                found.add(function)
        return found

    def closure(self, roots: set[int]) -> set[int]:
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            function = stack.pop()
            if function in seen:
                continue
            seen.add(function)
            for address in self.references.get(function, ()):
                stack.extend(self._reached(address) - seen)
        return seen

    def named(self, pattern: str) -> set[int]:
        regex = re.compile(pattern)
        return {address for name, address in self.by_name.items() if regex.match(name)}


def _parsers(binary: _Binary, registers: dict[int, str]) -> dict[str, int]:
    """Which flatbuffer parser each op's resolver method registers, read from the host build's resolver.

    The Python package's `PythonOpsResolver` constructor calls every `Add<Op>()`, inlined: a call to
    `Register_<OP>()` followed by the address of its `Parse...` function.
    """
    parsers: dict[str, int] = {}
    for constructor in binary.named(_OPS_RESOLVER_CTOR.pattern):
        current = None
        for target in binary.calls_in_order.get(constructor, []):
            if target in registers:
                current = registers[target]
                continue
            function = binary.function_at(target)
            name = binary.functions[function][1] if function is not None else ""
            if current and re.match(r"_ZN6tflite5micro\d+Parse", name) and current not in parsers:
                parsers[current] = function
    for op, parser in _SHARED_PARSERS.items():
        found = binary.named(rf"_ZN6tflite5micro\d+Parse{parser}E")
        if op in registers.values() and op not in parsers and found:
            parsers[op] = min(found)
    return parsers


def measure(path: Path | None = None) -> dict:
    """Measure the core and every op's kernel in a TFLM shared object; the content of TABLE."""
    from edgebase.deps import version_of

    binary = _Binary(path or shared_object())
    core_roots: set[int] = set()
    for pattern in CORE_ROOTS:
        core_roots |= binary.named(pattern)
    core = binary.closure(core_roots)
    registers = {
        address: match.group(1)
        for name, address in binary.by_name.items()
        if (match := _REGISTER.match(name))
    }
    parsers = _parsers(binary, registers)
    kernels = {}
    for address, op in sorted(registers.items(), key=lambda item: item[1]):
        roots = {address} | ({parsers[op]} if op in parsers else set())
        kernels[op] = binary.closure(roots) - core
    used = sorted(core.union(*kernels.values()))
    index = {address: i for i, address in enumerate(used)}
    return {
        "tflite_micro": version_of("tflite-micro"),
        "machine": "x86-64",
        "method": "call-graph closure over the host build's symbol table; see toolchain/backends/tflite_micro/codesize.py",
        "function_bytes": [binary.functions[a][0] for a in used],
        "core": sorted(index[a] for a in core),
        "kernels": {op: sorted(index[a] for a in functions) for op, functions in kernels.items()},
    }


@dataclass(frozen=True)
class CodeSize:
    core_bytes: int
    kernel_bytes: int  # the union of the kernels of the ops asked for
    per_op: dict[str, int]  # each op's kernel alone (shared helpers counted in each)
    unknown: list[str]  # ops the table has no figure for
    measured_on: str  # "tflite-micro <version>, x86-64"

    @property
    def total_bytes(self) -> int:
        return self.core_bytes + self.kernel_bytes


@cache
def load_table() -> dict:
    return json.loads(TABLE.read_text())


def estimate(ops: list[str], table: dict | None = None) -> CodeSize:
    table = table or load_table()
    sizes = table["function_bytes"]
    kernels = table["kernels"]
    union: set[int] = set()
    per_op = {}
    for op in sorted(set(ops)):
        if op in kernels:
            union.update(kernels[op])
            per_op[op] = sum(sizes[i] for i in kernels[op])
    return CodeSize(
        core_bytes=sum(sizes[i] for i in table["core"]),
        kernel_bytes=sum(sizes[i] for i in union),
        per_op=per_op,
        unknown=sorted(set(ops) - set(kernels)),
        measured_on=f"tflite-micro {table['tflite_micro']}, {table['machine']}",
    )


if __name__ == "__main__":
    TABLE.write_text(json.dumps(measure(), separators=(",", ":")) + "\n")
    print(f"wrote {TABLE}")
