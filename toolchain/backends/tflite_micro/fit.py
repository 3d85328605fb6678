"""Does a TFLite Micro model fit the board? Flash and RAM against the target profile, as a table.

flash = the .tflite model (measured) + the interpreter core and the kernels of
        exactly the model's ops (estimated, `toolchain.backends.tflite_micro.codesize`)
        + what the profile reserves (bootloader, app partition; sourced there)
RAM   = the smallest tensor arena that ran (measured, `toolchain.backends.tflite_micro.arena`)
        + the stated margin + what the profile reserves

A model that does not fit fails the build with the table and with what would
make it fit: which layers hold the most weights, which layer needs the most
arena, and roughly how many channels or how large an input the board allows.
"""

from __future__ import annotations

import math

from edgebundle.manifest import FitItem, MemoryBudget, MemoryFit
from targets import TargetProfile
from toolchain.backends.tflite_micro.arena import ArenaMeasurement
from toolchain.backends.tflite_micro.codesize import CodeSize
from toolchain.backends.tflite_micro.model import MicroModel, Op
from toolchain.errors import EdgectlError


class MemoryFitError(EdgectlError):
    """The model needs more flash or RAM than the board has."""

    fit: MemoryFit | None = None


def _reserve(profile: TargetProfile, memory: str) -> FitItem | None:
    options = profile.runtime_options()
    kb = getattr(options, f"{memory}_reserved_kb", 0)
    if not kb:
        return None
    note = options.reserved_note
    return FitItem(what=f"reserved: {note}", bytes=kb * 1024, basis="board")


def _budget(capacity_kb: int, items: list[FitItem]) -> MemoryBudget:
    needed = sum(item.bytes for item in items)
    return MemoryBudget(
        capacity_bytes=capacity_kb * 1024, items=items, needed_bytes=needed, fits=needed <= capacity_kb * 1024
    )


def fit_report(
    profile: TargetProfile,
    model: MicroModel,
    arena: ArenaMeasurement,
    margin: tuple[int, str],
    code: CodeSize,
) -> MemoryFit:
    margin_bytes, margin_rule = margin
    ops = sorted(model.op_counts)
    flash_items = [
        FitItem(what="model (.tflite flatbuffer)", bytes=model.size_bytes, basis="measured"),
        FitItem(what="TFLM interpreter core", bytes=code.core_bytes, basis="estimated"),
        FitItem(
            what=f"TFLM kernels of the model's {len(ops)} ops", bytes=code.kernel_bytes, basis="estimated"
        ),
    ]
    ram_items = [
        FitItem(what="tensor arena (smallest that ran)", bytes=arena.smallest_bytes, basis="measured"),
        FitItem(what="arena margin", bytes=margin_bytes, basis="policy"),
    ]
    for items, memory in ((flash_items, "flash"), (ram_items, "sram")):
        if (reserved := _reserve(profile, memory)) is not None:
            items.append(reserved)
    flash = _budget(profile.flash_kb or 0, flash_items)
    ram = _budget(profile.sram_kb or 0, ram_items)
    peak = model.peak_op()
    notes = [
        f"flash for code: call-graph measure of TFLM's x86-64 host build ({code.measured_on}); an estimate "
        "for Thumb-2 or Xtensa code, which TFLM documents as smaller (16 KB core on a Cortex-M3); "
        "libc/libm and optimized kernel libraries (CMSIS-NN, ESP-NN) are not included",
        f"arena: smallest that allocated and ran one calibration input in TFLM on a 64-bit host "
        f"({arena.probes} sizes tried); TFLM's own bookkeeping in it ({arena.recorded_tail_bytes} B recorded) "
        "is smaller on a 32-bit MCU, so that part is an upper bound",
        f"arena margin: {margin_rule}",
        "not counted: the stack, the MicroInterpreter and op resolver objects (static RAM, a few hundred "
        "bytes), and the application's own code and data: they must fit in the headroom",
    ]
    if code.unknown:
        notes.append(f"no code-size figure for {', '.join(code.unknown)}: not counted in flash")
    return MemoryFit(
        fits=flash.fits and ram.fits,
        flash=flash,
        ram=ram,
        arena_bytes=arena.smallest_bytes + margin_bytes,
        arena_measured_bytes=arena.smallest_bytes,
        arena_margin_bytes=margin_bytes,
        arena_margin_rule=margin_rule,
        arena_recorded_bytes=arena.recorded_total_bytes,
        ops=model.op_counts,
        peak_layer=_op_name(model, peak) if peak else None,
        peak_layer_bytes=model.live_bytes[peak.index] if peak else 0,
        notes=notes,
    )


def _op_name(model: MicroModel, op: Op) -> str:
    shape = "x".join(str(d) for d in model.tensors[op.outputs[0]].shape) if op.outputs else "?"
    return f"op {op.index} {op.name} '{op.layer}' -> {shape}"


def _kb(value: int) -> str:
    return f"{value / 1024:,.1f} KB"


def table(fit: MemoryFit) -> list[str]:
    """The fit as text lines: every item, the totals against the board, the headroom or the overflow."""
    lines = [f"  {'':6}{'':48}{'bytes':>12}  basis"]
    for label, budget in (("flash", fit.flash), ("RAM", fit.ram)):
        for i, item in enumerate(budget.items):
            lines.append(f"  {label if i == 0 else '':6}{item.what[:48]:48}{item.bytes:>12,}  {item.basis}")
        verdict = "fits" if budget.fits else "DOES NOT FIT"
        difference = budget.capacity_bytes - budget.needed_bytes
        lines.append(
            f"  {'':6}{'= needed, of ' + _kb(budget.capacity_bytes) + ' on the board':48}"
            f"{budget.needed_bytes:>12,}  {verdict} "
            f"({_kb(abs(difference))} {'free' if difference >= 0 else 'over'})"
        )
    return lines


def suggestions(fit: MemoryFit, model: MicroModel, input_hw: tuple[int, int] | None) -> list[str]:
    """What would make the model fit, from the figures: the heaviest layers, the arena's peak layer."""
    advice = []
    if not fit.flash.fits:
        fixed = fit.flash.needed_bytes - model.weight_bytes
        room = fit.flash.capacity_bytes - fixed
        heavy = ", ".join(f"{_op_name(model, op)} {op.weight_bytes:,} B" for op in model.heaviest_ops(3))
        text = f"flash: the weights take {model.weight_bytes:,} B; the heaviest layers: {heavy}"
        if room > 0:
            # a convolution's weights grow with in x out channels: scaling every layer's channels by f
            # scales the weights by about f squared
            share = math.sqrt(room / model.weight_bytes)
            text += f"; about {share:.0%} of the channels in every layer would fit (weights grow with channels squared)"
        else:
            text += "; even without weights the code and reserves exceed the flash: choose a bigger board"
        advice.append(text)
    if not fit.ram.fits:
        fixed = fit.ram.needed_bytes - fit.peak_layer_bytes
        room = fit.ram.capacity_bytes - fixed
        text = f"RAM: {fit.peak_layer} needs the most arena, {fit.peak_layer_bytes:,} B of activations alive at once"
        if room > 0 and fit.peak_layer_bytes:
            share = room / fit.peak_layer_bytes
            text += f"; about {share:.0%} of the channels there would fit (activations grow with channels)"
            if input_hw:
                h, w = input_hw
                side = math.sqrt(share)
                text += (
                    f", or an input of about {max(1, int(h * side))}x{max(1, int(w * side))} instead of "
                    f"{h}x{w} (activations grow with the input's area)"
                )
        else:
            text += "; even without activations the margin and reserves exceed the RAM: choose a bigger board"
        advice.append(text)
    return advice


def check(
    fit: MemoryFit,
    model: MicroModel,
    profile: TargetProfile,
    input_hw: tuple[int, int] | None,
    others: list[TargetProfile],
) -> None:
    """Raise MemoryFitError with the table and the advice when the model does not fit the board."""
    if fit.fits:
        return
    over = [
        f"{name} {_kb(budget.needed_bytes)} of {_kb(budget.capacity_bytes)}"
        for name, budget in (("flash", fit.flash), ("RAM", fit.ram))
        if not budget.fits
    ]
    ops = ", ".join(f"{name} x{count}" for name, count in fit.ops.items())
    lines = [
        f"the model does not fit {profile.name}: {', '.join(over)}",
        *table(fit),
        f"  ops: {ops}",
        "  what would make it fit:",
    ]
    lines += [f"  - {text}" for text in suggestions(fit, model, input_hw)]
    bigger = [
        p.name
        for p in others
        if p.name != profile.name
        and (p.flash_kb or 0) * 1024 - _reserved_bytes(p, "flash")
        >= fit.flash.needed_bytes - _reserved_bytes(profile, "flash")
        and (p.sram_kb or 0) * 1024 - _reserved_bytes(p, "sram")
        >= fit.ram.needed_bytes - _reserved_bytes(profile, "sram")
    ]
    hint = "make the model smaller as listed above"
    if bigger:
        hint += f", or build for a board it fits: {', '.join(sorted(bigger))}"
    error = MemoryFitError("\n".join(lines), hint=hint)
    error.fit = fit
    raise error


def _reserved_bytes(profile: TargetProfile, memory: str) -> int:
    item = _reserve(profile, memory)
    return item.bytes if item else 0
