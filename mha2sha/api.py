"""Python API: ``mha2sha.convert(...)`` and ``mha2sha.inspect(...)``.

A conversion loads the model lazily, splits every attention block it understands, optionally
turns linear layers into 1x1 Conv, carries the AIMET encodings onto the new tensors, writes
everything atomically into the output folder, and verifies the result.
"""

from __future__ import annotations

import inspect as pyinspect  # `inspect` is this module's function
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from mha2sha.errors import (
    EXIT_NO_ATTENTION,
    EXIT_OK,
    EXIT_VERIFICATION_FAILED,
    InputError,
    NoAttentionError,
    OutputError,
    UsageError,
)
from mha2sha.graph.io import (
    EXTERNAL_DATA_THRESHOLD,
    load_model,
    prepare_output_dir,
    safe_output_name,
    save_model,
)
from mha2sha.outputs import OutputTransaction, disk_full, write_text
from mha2sha.passes.cleanup import cleanup
from mha2sha.pipeline import BlockReport, SplitResult, _all_names, split_model
from mha2sha.progress import Progress

log = logging.getLogger("mha2sha")

MAPPING_FILE = "mha_to_sha_encodings_names.json"


KV_CACHE_IO = ("per-head", "head-major", "original")


@dataclass
class ConvertOptions:
    """What a conversion should do.

    Every field that has a ``mha2sha convert`` flag has the flag's name (``--build-ar 2`` is
    ``build_ar=2``). The names of earlier versions are still accepted, by the constructor and
    as attributes: ``heads_per_block`` (= ``build_ar``), ``end_to_end`` (= not
    ``no_verification``), ``per_head_cache_io`` and ``head_major_cache_io`` (= ``kv_cache_io``).
    """

    name: str | None = None
    """Output model name (``--name``); default: input stem + ``_conv``/``_kvcache`` + ``_sha``."""
    encodings: str | Path | None = None
    """AIMET encodings of the model (``-e/--encodings``: 0.6.1, 1.0.0, 2.0.0 or 2.1.0) to carry onto the SHA model."""
    replace_linear_with_conv: bool = False
    """MatMul/Gemm with constant weights become 1x1 Conv (``--replace-linear-with-conv``)."""
    verify: bool = True
    """Run the per-block verification at all (no flag: the command line always verifies)."""
    no_verification: bool = False
    """Skip the end-to-end run; the per-block checks still run (``--no-verification``)."""
    encodings_version: str | None = None
    """Write the SHA encodings in 0.6.1, 1.0.0 or 2.0.0 (``--encodings-version``); default: the input's."""
    allow_no_attention: bool = False
    """Write the model unchanged (exit 0) when no attention block is found (``--allow-no-attention``)."""
    seed: int = 42
    """Seed of the random verification inputs (``--seed``)."""
    progress: bool = False
    """Progress bars on stderr (the command line turns them on for a terminal)."""
    build_ar: int = 1
    """Heads per attention block after the split, AR-M (``--build-ar M``); 1 = single-head."""
    kv_cache_io: str = "per-head"
    """KV-cache graph inputs/outputs (``--kv-cache-io``): ``per-head`` (one per kv head, head axis
    removed), ``head-major`` (one per cache, kv heads first) or ``original`` (sliced in the graph)."""
    strict: bool = False
    """Refuse the run (exit 2) when a KV cache cannot be made one per kv head under ``per-head`` cache I/O (``--strict``)."""
    link_weights: bool = False
    """Reference unchanged weights from a copy-on-write clone of the input's data file, copied where the file system cannot clone (``--link-weights``)."""
    allow_hard_links: bool = False
    """Read external data files that have several hard links (``--allow-hard-links``)."""
    create_input_lists: bool = False
    """Also write raw inputs, MHA goldens and the input lists (``--create-input-lists``)."""
    ar_tokens: int | None = None
    """First rebuild a static cached decoder for this many new tokens per step (``--ar-tokens``)."""
    ar_context: int | None = None
    """With ``ar_tokens``: the context length (``--ar-context``); default: the model's past + new."""
    lora_alpha_from_input: bool = False
    """First make every LoRA alpha a graph input (``--lora-alpha-from-input``)."""
    lora_adaptors: str | Path | None = None
    """YAML list of LoRA adaptors to convert with the model (``--lora-adaptors``; docs/user-guide.md)."""
    optimize_o_proj: bool = False
    """Per-head layout into a Conv o_proj instead of the merged chain (``--optimize-o-proj``)."""
    overwrite: bool = False
    """Replace files in the output folder that mha2sha did not write, never an input (``--overwrite``)."""
    emit_qdq: bool = False
    """Also write ``<name>_qdq.onnx``: the SHA model as a QDQ model from the encodings (``--emit-qdq``)."""
    expectations: object | None = None
    """A ``mha2sha.compat.ReferenceFlags`` whose expectations are checked (``mha2sha-onnx-converter``)."""
    prepared: dict | None = None
    """What a caller's own pre-split change did, for the report's "prepared" section (the
    driver's --ar-tokens / --lora-alpha-from-input report theirs themselves)."""

    def __post_init__(self):
        if self.kv_cache_io not in KV_CACHE_IO:
            raise ValueError(f"kv_cache_io must be one of {', '.join(KV_CACHE_IO)}, not {self.kv_cache_io!r}")

    # --- the names of earlier versions ------------------------------------------------------
    @property
    def heads_per_block(self) -> int:
        return self.build_ar

    @heads_per_block.setter
    def heads_per_block(self, value: int) -> None:
        self.build_ar = value

    @property
    def end_to_end(self) -> bool:
        return not self.no_verification

    @end_to_end.setter
    def end_to_end(self, value: bool) -> None:
        self.no_verification = not value

    @property
    def per_head_cache_io(self) -> bool:
        return self.kv_cache_io != "original"

    @per_head_cache_io.setter
    def per_head_cache_io(self, value: bool) -> None:
        if not value:
            self.kv_cache_io = "original"
        elif self.kv_cache_io == "original":
            self.kv_cache_io = "per-head"

    @property
    def head_major_cache_io(self) -> bool:
        return self.kv_cache_io == "head-major"

    @head_major_cache_io.setter
    def head_major_cache_io(self, value: bool) -> None:
        if value:
            self.kv_cache_io = "head-major"
        elif self.kv_cache_io == "head-major":
            self.kv_cache_io = "per-head"


_OPTION_ALIASES = {"heads_per_block": "build_ar", "end_to_end": "no_verification",
                   "per_head_cache_io": "kv_cache_io", "head_major_cache_io": "kv_cache_io"}
_dataclass_init = ConvertOptions.__init__


def _init_with_aliases(self, *args, **kwargs):
    aliases = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTION_ALIASES}
    for old, new in _OPTION_ALIASES.items():
        if old in aliases and new in kwargs:
            raise TypeError(f"ConvertOptions: give {new} or its old name {old}, not both")
    _dataclass_init(self, *args, **kwargs)
    if aliases.get("per_head_cache_io") is False:
        aliases.pop("head_major_cache_io", None)  # as before: head-major applied to per-head caches only
    for old in ("heads_per_block", "end_to_end", "per_head_cache_io", "head_major_cache_io"):
        if old in aliases:
            setattr(self, old, aliases[old])


_init_with_aliases.__signature__ = pyinspect.signature(_dataclass_init)
_init_with_aliases.__doc__ = _dataclass_init.__doc__
ConvertOptions.__init__ = _init_with_aliases


@dataclass
class ConversionResult:
    """What a conversion produced. ``ok`` is True only when every check passed."""

    output_dir: Path
    model_path: Path | None
    encodings_path: Path | None
    mapping_path: Path | None
    blocks: list[BlockReport]
    report: dict | None = None
    report_paths: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    prequant_only: bool = False  # --skip-mha2sha: only the pre-quantization adaptation ran
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


    @property
    def converted_blocks(self) -> list[BlockReport]:
        return [b for b in self.blocks if b.converted]

    @property
    def ok(self) -> bool:
        return self.report is None or self.report.get("status") == "pass"

    @property
    def exit_code(self) -> int:
        if self.prequant_only:
            return EXIT_OK
        if not self.converted_blocks:
            return EXIT_NO_ATTENTION
        return EXIT_OK if self.ok else EXIT_VERIFICATION_FAILED


def default_name(model_path: Path, *, conv: bool, kv_cache: bool) -> str:
    """The reference tool's naming: stem + _conv + _kvcache + _sha."""
    stem = model_path.name[:-5] if model_path.name.endswith(".onnx") else model_path.stem
    return stem + ("_conv" if conv else "") + ("_kvcache" if kv_cache else "") + "_sha"


def name_mapping(split: SplitResult, conv=None) -> dict:
    """``{"activation_encodings": {mha: [sha...]}, "param_encodings": {mha: [sha...]}}``: the
    split's ledger, and a linear->conv ``ConvRecord`` run outside the driver (``conv``)."""
    if conv is None:
        return split.ledger.name_mapping()
    from mha2sha.ledger import Ledger
    from mha2sha.passes.linear_to_conv import ledger_entries

    return Ledger(list(split.ledger.entries) + ledger_entries(conv)).name_mapping()


def inspect(model_path: str | Path, *, allow_hard_links: bool = False) -> list[BlockReport]:
    """The attention blocks of a model, as the converter sees them (nothing is written)."""
    loaded = load_model(model_path, allow_hard_links=allow_hard_links)
    return split_model(loaded.model, analyse_only=True).blocks


def _base_report(model_path: Path, opts: ConvertOptions) -> dict:
    from mha2sha._version import __version__

    return {
        "status": "fail",
        "tool": {"name": "mha2sha", "version": __version__},
        "model": {"original": str(model_path), "encodings": str(opts.encodings) if opts.encodings else None},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items() if k not in ("expectations", "prepared")},
        "seed": opts.seed,
        "blocks": [],
        "skipped_blocks": [],
    }


def convert(model_path: str | Path, output_dir: str | Path, options: ConvertOptions | None = None, **kwargs) -> ConversionResult:
    """Convert ``model_path`` into ``output_dir``; see ConvertOptions for the knobs.

    Bad input raises before anything is written. Once the output folder exists, a
    verification report is always written there, saying which stage failed if one did.
    """
    from mha2sha._own_packages import check_own_packages

    check_own_packages()  # a user's verify.py first on sys.path gets a clear error, not a traceback
    opts = options or ConvertOptions(**kwargs)
    if not isinstance(opts.heads_per_block, int) or opts.heads_per_block < 1:
        raise UsageError(None, f"--build-ar {opts.heads_per_block}: the heads per attention block must be 1 or more (1 = single-head)")
    started = time.perf_counter()
    model_path = Path(model_path)
    loaded = load_model(model_path, allow_hard_links=opts.allow_hard_links)
    encodings = _read_encodings(opts.encodings)
    encodings_warnings = _validate_encodings(encodings, loaded.model) if encodings is not None else []
    adaptor_specs = None
    if opts.lora_adaptors is not None:
        from mha2sha.lora_adaptors import read_adaptor_list

        adaptor_specs = read_adaptor_list(opts.lora_adaptors)
    prepared = None
    if opts.ar_tokens is not None or opts.lora_alpha_from_input:
        prepared = _prepare(loaded, model_path, opts, encodings)  # in memory; refused here, before anything is written
        if prepared.changed:
            encodings = prepared.encodings
            encodings_warnings = _validate_encodings(encodings, loaded.model) if encodings is not None else []
        else:
            loaded = load_model(model_path, allow_hard_links=opts.allow_hard_links)  # as given (adapt sorts in place)
    inputs = [model_path] + ([Path(opts.encodings)] if opts.encodings else []) + _external_files(loaded.model)
    for spec in adaptor_specs or []:
        inputs += [Path(spec.weights)] + ([Path(spec.encodings)] if spec.encodings is not None else [])
    out_dir = prepare_output_dir(output_dir, inputs)
    if opts.name is not None:
        _refuse_overwriting_inputs(out_dir, safe_output_name(opts.name), inputs)
    # Everything this run writes is staged and moved in as one step at the end (see mha2sha.outputs).
    staged = OutputTransaction(out_dir, inputs, overwrite=opts.overwrite)
    try:
        return _convert_into(staged, model_path, opts, loaded, encodings, encodings_warnings, adaptor_specs, inputs, started, prepared)
    finally:
        staged.discard()


def _convert_into(staged: OutputTransaction, model_path: Path, opts: ConvertOptions, loaded, encodings, encodings_warnings,
                  adaptor_specs, inputs: list[Path], started: float, prepared=None) -> ConversionResult:
    """The pipeline, on one in-memory model: prepare -> find and split -> passes -> consumers
    -> save -> verify. ``prepared`` (mha2sha.prepare.Prepared): the MHA model was changed
    before the split; it is staged as OUTDIR/prepared/, and verification compares against it."""
    run = _Run(staged, model_path, opts, loaded, encodings, adaptor_specs, started)
    run.begin(prepared, encodings_warnings)
    try:
        run.start_verifier()
        run.find_and_split()
        run.passes()
        specs = run.correspondence()
        run.save(specs)
        run.consumers(specs)
        run.verify(specs)
    except (OutputError, UsageError):
        raise  # the output folder or the options are the problem: write nothing
    except (KeyboardInterrupt, SystemExit):
        raise  # interrupted: the staging folder goes, the output folder stays as it was
    except BaseException as exc:
        run.fail(exc)
        raise
    finally:
        if run.verifier is not None:
            run.verifier.close()  # its workers end with the run, whichever way it ends
    return run.commit()


class _Run:
    """The state of one conversion between the driver's stages (``_convert_into``)."""

    def __init__(self, staged: OutputTransaction, model_path: Path, opts: ConvertOptions, loaded, encodings, adaptor_specs,
                 started: float):
        self.staged, self.model_path, self.opts, self.loaded = staged, model_path, opts, loaded
        self.encodings, self.adaptor_specs, self.started = encodings, adaptor_specs, started
        self.mha_path = model_path  # the MHA model the SHA model is verified against
        self.model = loaded.model
        self.prequant_map = None
        self.progress = Progress(bar=opts.progress)
        self.timings: dict[str, float] = {}
        self.stage = "find and split"  # named in the report when a stage fails
        self.result = ConversionResult(staged.out_dir, None, None, None, [])
        self.verifier = None
        self.split: SplitResult | None = None
        self.conv_record = None
        self.model_file = self.encodings_file = None
        self.sha_encodings = self.original_model = None
        self.mapping: dict = {}

    @property
    def external(self) -> bool:
        return self.loaded.external or self.loaded.weight_bytes > EXTERNAL_DATA_THRESHOLD

    def begin(self, prepared, encodings_warnings) -> None:
        """Stage the prepared MHA model (if any) and start the report."""
        opts = self.opts
        if prepared is not None and prepared.changed:
            from mha2sha.prepare import write_prepared

            path = self.model_path
            stem = path.name[:-5] if path.name.endswith(".onnx") else path.stem
            prepared_file = write_prepared(prepared, self.staged, stem, encodings_version=opts.encodings_version, external=self.external)
            self.mha_path = self.staged.tmp / prepared_file  # the verifier's workers read it
            self.prequant_map = prepared.mapping or None
        if opts.name is not None:
            for suffix in (".onnx", ".onnx.data", ".encodings"):
                self.staged.check_target(safe_output_name(opts.name) + suffix)
        self.report = report = _base_report(self.model_path, opts)
        if encodings_warnings:
            report["encodings_warnings"] = encodings_warnings[:200]
        if prepared is not None:
            report["prepared"] = prepared.summary
            if prepared.changed:
                report["model"]["original"] = prepared.summary["model"]  # where it will be
        elif opts.prepared is not None:
            report["prepared"] = opts.prepared

    def start_verifier(self) -> None:
        if self.opts.verify:
            from mha2sha.block_verification import BlockVerifier

            # Started now: its worker processes import what they need while the graph pass runs.
            self.verifier = BlockVerifier(self.mha_path, weight_bytes=self.loaded.weight_bytes, seed=self.opts.seed,
                                          allow_hard_links=self.opts.allow_hard_links)

    def find_and_split(self) -> None:
        opts, report, model = self.opts, self.report, self.model
        t0 = time.perf_counter()
        self.original_names = set(_all_names(model.graph)) if opts.optimize_o_proj else set()
        requantized = _requantized(self.encodings) if self.encodings is not None else None
        with self.progress.stage("finding and splitting attention blocks") as p:
            self.split = split = split_model(model, heads_per_block=opts.heads_per_block, per_head_cache_io=opts.per_head_cache_io,
                                             requantized=requantized, progress=p)
        self.timings["split"] = time.perf_counter() - t0
        self.ledger = split.ledger
        if opts.expectations is not None:
            from mha2sha.expectations import check_expectations

            report["expectations"] = check_expectations(opts.expectations, split.blocks)
            report["strict_expectations"] = bool(getattr(opts.expectations, "strict", False))
        self.result.blocks = split.blocks
        report["skipped_blocks"] = [b.as_dict() for b in split.skipped]
        if not split.converted and opts.heads_per_block != 1 and split.blocks:
            _refuse_build_ar(self.mha_path, opts)
        if not split.converted and not opts.allow_no_attention:
            raise NoAttentionError(self.model_path, _no_attention_message(split.blocks))
        if opts.per_head_cache_io:
            report["whole_caches"] = split.whole_caches
            if split.whole_caches and opts.strict:
                first = split.whole_caches[0]
                raise UsageError(None, f"--kv-cache-io per-head --strict: KV cache {first['kind']} {first['tensor']!r} ({first['block']}) "
                                       f"cannot be given per head: {first['reason']}"
                                       + (f" (and {len(split.whole_caches) - 1} more)" if len(split.whole_caches) > 1 else ""))

    def passes(self) -> None:
        """The optional passes, each ``run(model, ledger, ...) -> PassResult``."""
        opts, model, ledger, encodings = self.opts, self.model, self.ledger, self.encodings
        if opts.replace_linear_with_conv:
            self.stage = "linear to conv"
            from mha2sha.passes import linear_to_conv

            self.conv_record = linear_to_conv.run(model, ledger, encoded=_encoded_names(encodings, ledger)).report
            cleanup(model)
        if opts.head_major_cache_io and opts.per_head_cache_io:
            from mha2sha.passes import head_major_io

            moved = head_major_io.run(model, ledger).report
            self.report["head_major_cache_io"] = moved["rewritten"]
            self.report["head_major_cache_io_kept"] = moved["kept"]
            cleanup(model)
        if opts.optimize_o_proj:
            self.stage = "optimize o_proj"
            from mha2sha.passes import o_proj

            self.report["optimize_o_proj"] = o_proj.run(model, ledger, encoded=set(encodings.tensors) if encodings is not None else set(),
                                                        original_names=self.original_names).report

    def correspondence(self):
        """The verifier's correspondence (a consumer of the ledger), handed to the block verifier
        before the save: blocks are checked while the data file is written."""
        from mha2sha.correspondence import correspondence_from_ledger

        split = self.split
        kv_cache = any(b.features.get("past_kv", "none") != "none" for b in split.converted)
        self.name = safe_output_name(self.opts.name or default_name(self.model_path, conv=self.opts.replace_linear_with_conv, kv_cache=kv_cache))
        specs = correspondence_from_ledger(self.ledger, split.converted, source=f"mha2sha {_version()}")
        if self.verifier is not None and specs.blocks:
            self.stage = "verify"
            self.verifier.prepare(specs, self.model, expect_encodings=self.encodings is not None)
        return specs

    def save(self, specs) -> None:
        self.stage = "save"
        t0 = time.perf_counter()
        with self.progress.stage("saving weights") as p:
            self.model_file, write_stats = save_model(self.model, self.staged, self.name, external=self.external,
                                                      link_weights=self.opts.link_weights, progress=p,
                                                      observer=self.verifier if specs.blocks else None)
        self.report["write"] = write_stats
        self.timings["save"] = time.perf_counter() - t0

    def consumers(self, specs) -> None:
        """Everything written about the conversion: functions of (original, converted, ledger)."""
        from mha2sha.prequant import ALL_STAGES_FILE, write_all_stages_mapping

        opts, staged, model, ledger, encodings, report = self.opts, self.staged, self.model, self.ledger, self.encodings, self.report
        self.mapping = mapping = ledger.name_mapping()
        _write_correspondence(staged, specs)
        with open(staged.path(MAPPING_FILE), "w") as fh:
            json.dump(mapping, fh, indent=1, sort_keys=True)
        # Original (AIMET export) name -> names in the final model, through every stage.
        stages = ([self.prequant_map] if self.prequant_map else []) + [mapping, self.conv_record]
        write_all_stages_mapping(staged.path(ALL_STAGES_FILE), stages, final_model=model,
                                 originals=set(encodings.tensors) if encodings is not None else None)
        if encodings is not None:
            self.stage = "encodings"
            from mha2sha.encodings import numeric_encodings, write_encodings
            from mha2sha.encodings.propagate import propagate

            self.original_model = load_model(self.mha_path, allow_hard_links=opts.allow_hard_links, validate=False).model
            self.sha_encodings, summary = propagate(encodings, self.original_model, model, ledger)
            report["encodings"] = summary
            self.encodings_file = f"{self.name}.encodings"
            write_encodings(self.sha_encodings, staged.path(self.encodings_file), version=opts.encodings_version)
            mha_numeric = numeric_encodings(encodings, self.original_model)
            sha_numeric = numeric_encodings(self.sha_encodings, model)
            if self.verifier is not None:
                self.verifier.set_encodings(mha_numeric, sha_numeric)
            if opts.emit_qdq:
                self.stage = "qdq"
                report["qdq"] = _write_qdq(model, sha_numeric, staged, self.name, external=self.loaded.external)
        if self.adaptor_specs is not None:
            self.stage = "lora adaptors"
            from mha2sha.lora_adaptors import convert_adaptors

            original_model = load_model(self.mha_path, allow_hard_links=opts.allow_hard_links, validate=False).model
            adaptors = convert_adaptors(self.adaptor_specs, staged, original=original_model, converted=model, ledger=ledger,
                                        encodings_version=opts.encodings_version)
            report["lora_adaptors"] = {
                "adaptors": [{"name": a.name, "tensors": len(a.tensors), "cast_to_model_dtype": a.cast,
                              "encodings": a.encodings_summary, **({"peft": a.peft} if a.peft else {})} for a in adaptors.adaptors],
                "tensor_names": len(adaptors.tensor_names),
            }
        # Verification reads the staged model; the report names where it will be.
        result = self.result
        self.staged_model = staged.tmp / self.model_file
        result.model_path = staged.final(self.model_file)
        result.encodings_path = staged.final(self.encodings_file) if self.encodings_file else None
        result.mapping_path = staged.final(MAPPING_FILE)
        report["model"]["converted"] = str(result.model_path)
        report["model"]["sha_encodings"] = str(result.encodings_path) if result.encodings_path else None
        if opts.create_input_lists:
            self.stage = "input lists"
            from mha2sha.input_lists import write_input_lists

            report["input_lists"] = write_input_lists(staged, self.mha_path, self.staged_model, specs, seed=opts.seed,
                                                      weight_bytes=self.loaded.weight_bytes)

    def verify(self, specs) -> None:
        opts, report, model = self.opts, self.report, self.model
        if not (opts.verify and self.split.converted):
            return
        self.stage = "verify"
        # Most blocks were checked while the data file was written (mha2sha.block_verification).
        with self.progress.stage("verifying blocks") as p:
            self.verifier.wait(progress=p)
        verification = self.verifier.report(self.staged_model, end_to_end=opts.end_to_end)
        self.timings.update({f"verify_{k}": v for k, v in verification.pop("timings").items()})
        report.update(verification)
        from verify.contract import io_contract

        report["io_contract"] = io_contract(load_model(self.mha_path, allow_hard_links=opts.allow_hard_links).model, model)
        if self.encodings is not None:
            from verify.run import encodings_coverage

            original_model = self.original_model
            sha_tensors = set(_all_names(model.graph))
            report["encodings_coverage"] = encodings_coverage(self.mapping, set(self.encodings.tensors), set(self.sha_encodings.tensors), sha_tensors,
                                                              mha_tensors=set(_all_names(original_model.graph)) | {v.name for v in original_model.graph.inputs})
        section = _htp_section(self.mha_path, self.staged_model, specs, opts, self.loaded)
        if section is not None:
            report["htp"] = section

    def fail(self, exc: BaseException) -> None:
        """A stage failed: the run replaces the previous run's files with its report alone."""
        from verify.report import write_report

        staged, out_dir = self.staged, self.staged.out_dir
        full = disk_full(exc, out_dir)
        if full is not None:
            raise full from None
        self.report["failure"] = {"stage": self.stage, "message": str(exc) or type(exc).__name__}
        self.report["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        staged.drop_staged()
        try:
            write_report(self.report, staged.tmp)
            placed = staged.commit()
        except OSError as write_exc:
            raise disk_full(write_exc, out_dir) or write_exc from None
        self.result.report_paths = _report_paths(placed)

    def commit(self) -> ConversionResult:
        """Write the report and move every output into place (the model last)."""
        from verify.report import write_report

        opts, report, result, staged = self.opts, self.report, self.result, self.staged
        result.seconds = time.perf_counter() - self.started
        self.timings["total"] = result.seconds
        report["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        result.timings = dict(self.timings)
        try:
            if opts.verify:
                write_report(report, staged.tmp)
                result.report = report
                if report["status"] != "pass":
                    write_text(staged.path("VERIFICATION_FAILED"), "The verification report lists the failing checks: verification_report.md\n")
            placed = staged.commit(last=self.model_file)
        except OSError as exc:
            raise disk_full(exc, staged.out_dir) or exc from None
        if opts.verify:
            result.report_paths = _report_paths(placed)
        return result


def _htp_section(model_path: Path, converted: Path, specs, opts: ConvertOptions, loaded) -> dict | None:
    """The report's HTP section when onnxruntime-qnn is installed (mha2sha.htp); a backend
    failure is reported there, never fails the conversion."""
    from mha2sha import htp

    if htp.unavailable_reason() is not None:
        return None
    try:
        return htp.report_section(model_path, converted, specs, seed=opts.seed, weight_bytes=loaded.weight_bytes)
    except Exception as exc:  # noqa: BLE001 - the HTP section is information, not a check
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}


def _write_qdq(model: ir.Model, numeric: dict, staged, name: str, *, external: bool) -> dict:
    """--emit-qdq: <name>_qdq.onnx next to the SHA model (mha2sha.qdq)."""
    import onnx

    from mha2sha.qdq import to_qdq

    qdq, summary = to_qdq(ir.to_proto(model), numeric)
    path = staged.path(f"{name}_qdq.onnx")
    big = external or qdq.ByteSize() > 1_800_000_000
    if big:
        staged.path(f"{name}_qdq.onnx.data")
    onnx.save(qdq, str(path), save_as_external_data=big, location=f"{name}_qdq.onnx.data" if big else None)
    summary["file"] = path.name
    return summary


def _report_paths(placed: dict[str, Path]) -> dict[str, Path]:
    """{"json", "md", "html"}: the reports among the placed files (the page only when it was drawn)."""
    from verify.report import REPORT_JSON, REPORT_MD
    from verify.report_html import REPORT_HTML

    kinds = {"json": REPORT_JSON, "md": REPORT_MD, "html": REPORT_HTML}
    return {kind: placed[name] for kind, name in kinds.items() if name in placed}


def _read_encodings(path):
    if path is None:
        return None
    from mha2sha.encodings import read_encodings

    if not Path(path).is_file():
        raise InputError(path, "encodings file not found")
    try:
        return read_encodings(path)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None


def _encoded_names(encodings, ledger) -> set[str]:
    """Tensors of the SHA model that will carry an encoding: encoded MHA tensors and their pieces."""
    if encodings is None:
        return set()
    names = set(encodings.tensors)
    for original, pieces in ledger.pieces().items():
        if original in names:
            names.update(pieces)
    return names


def _validate_encodings(encodings, model: ir.Model) -> list[str]:
    """Channel counts against the model's tensors (a mismatch is bad input: exit 2); names
    the model does not have come back as warnings for the report."""
    from mha2sha.encodings import validate_against

    try:
        warnings = validate_against(encodings, model)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    from verify.encodings_check import foreign_encodings

    refusal = foreign_encodings(set(encodings.tensors), set(_all_names(model.graph)) | {v.name for v in model.graph.inputs},
                                quantizable_weights(model))
    if refusal:
        raise InputError(getattr(encodings, "source", None), refusal)
    if warnings:
        log.warning("%d encodings name tensors the model does not have, e.g. %s", len(warnings), warnings[0])
    return warnings


def quantizable_weights(model: ir.Model) -> set[str]:
    """Weights an AIMET export always encodes: float weight initializers of MatMul/Gemm/Conv."""
    inits = model.graph.initializers
    out = set()
    for node in model.graph:
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.inputs) > 1:
            w = node.inputs[1]
            if w is not None and w.name in inits and w.const_value is not None and w.const_value.dtype.is_floating_point():
                out.add(w.name)
    return out


def _version() -> str:
    from mha2sha._version import __version__

    return __version__


def _write_correspondence(staged, corr) -> None:
    """correspondence.json beside the model: which SHA tensors stand for which MHA tensors."""
    from verify.correspondence import FILE_NAME, dumps

    with open(staged.path(FILE_NAME), "w") as fh:
        fh.write(dumps(corr))


def _prepare(loaded, model_path: Path, opts: ConvertOptions, encodings):
    """--ar-tokens / --lora-alpha-from-input: change the MHA model in memory (mha2sha.prepare)."""
    from mha2sha.prepare import prepare_model

    return prepare_model(loaded.model, model_path, encodings=encodings, ar_tokens=opts.ar_tokens, ar_context=opts.ar_context,
                         lora_alpha_from_input=opts.lora_alpha_from_input)


def _requantized(encodings):
    """(output, input) -> True when the output has an encoding different from the input's."""
    import numpy as np

    def same(a, b) -> bool:
        if a.kind != b.kind or a.bitwidth != b.bitwidth or a.dtype != b.dtype:
            return False
        if a.scale is None or b.scale is None:
            return a.scale is None and b.scale is None
        return np.array_equal(np.asarray(a.scale), np.asarray(b.scale)) and np.array_equal(np.asarray(a.offset), np.asarray(b.offset))

    def check(output: str, source: str) -> bool:
        out = encodings.tensors.get(output)
        if out is None:
            return False
        src = encodings.tensors.get(source)
        return src is None or not same(out, src)

    return check


def _refuse_overwriting_inputs(out_dir: Path, name: str, inputs: list[Path]) -> None:
    protected = {p.resolve() for p in inputs if p.exists()}
    for candidate in (f"{name}.onnx", f"{name}.onnx.data", f"{name}.encodings", MAPPING_FILE, "correspondence.json"):
        target = (out_dir / candidate).resolve()
        if target in protected:
            raise OutputError(target, "refusing to overwrite an input file; choose another output folder or name")


def _external_files(model: ir.Model) -> list[Path]:
    files = set()
    for init in model.graph.initializers.values():
        tensor = init.const_value
        if isinstance(tensor, ir.ExternalTensor):
            files.add(Path(tensor.path))
    return sorted(files)


def _refuse_build_ar(model_path: Path, opts: ConvertOptions) -> None:
    """--build-ar M that no block's head count divides: exit 2 with the values that work
    (from the blocks found at AR-1, on a fresh copy of the model)."""
    import math

    blocks = inspect(model_path, allow_hard_links=opts.allow_hard_links)
    heads = [b.heads for b in blocks if b.converted and b.heads]
    if not heads:
        return
    common = math.gcd(*heads)
    works = [d for d in range(1, common + 1) if common % d == 0]
    counts = ", ".join(map(str, sorted(set(heads))))
    raise UsageError(model_path, f"--build-ar {opts.heads_per_block} does not divide the heads per block ({counts}); "
                                 f"values that work: {', '.join(map(str, works))}")


def _no_attention_message(blocks: list[BlockReport]) -> str:
    if not blocks:
        return "no attention found (no Softmax or Attention op)"
    reasons = "; ".join(f"{b.anchor}: {b.reason}" for b in blocks[:3])
    more = f" (and {len(blocks) - 3} more)" if len(blocks) > 3 else ""
    return f"no attention block could be converted: {reasons}{more}"
