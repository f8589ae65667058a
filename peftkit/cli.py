"""The ``peftkit`` command: train, eval, generate, plan, info, merge, vocab-reduce, bench.

Bad input (a missing file or column, a config value, a model folder that isn't there) ends with a
one-line ``peftkit: error: …`` and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only; a hub name fails fast instead of hanging

import yaml  # noqa: E402

from peftkit import __version__, load_builtins  # noqa: E402
from peftkit.core.errors import ConfigError, PeftkitError  # noqa: E402

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose errors (an unknown flag, a value of the wrong kind) are one line and exit 2."""

    def error(self, message: str):
        print(f"peftkit: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


class MethodListFormatter(argparse.HelpFormatter):
    """Help whose ``{methods}`` is the list of registered methods with their descriptions, made when the help
    is printed (so the registry is loaded only by ``--help`` of the commands that take ``--method``)."""

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        return text.replace("{methods}", method_list()) if "{methods}" in text else text


def method_list() -> str:
    """Every method ``--method`` takes, from the registry: registered methods, their quantised forms and
    variants, and full fine-tuning."""
    load_builtins()
    from peftkit.core.registry import method_variants, quantized_forms, registered_methods

    entries = [f"{name} ({method.description})" for name, method in sorted(registered_methods().items())]
    entries += [f"{name} ({form.description})" for name, (_, form) in sorted(quantized_forms().items())]
    entries += [f"{name} ({method.name} with {', '.join(f'{k}={v}' for k, v in options.items())}; bench only)"
                for name, (method, options) in sorted(method_variants().items())]
    return "; ".join(entries) + "; full (every weight of the model trains: the reference)"


def whole_number(minimum: int):
    """An argparse type: a whole number ≥ ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number ≥ {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number ≥ {minimum}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def _option_pairs(pairs: list[str]) -> dict:
    """``-o r=16 -o target_modules=[query,value]``: values parsed as YAML scalars / lists."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"method option '{pair}' must look like KEY=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"method option '{pair}': cannot read the value") from None
    return options


def _read_config_file(path: str) -> dict:
    from peftkit.core.yaml_files import read_yaml_mapping

    values = read_yaml_mapping(path, "config", "a mapping of option names to values")
    return {key.replace("-", "_"): value for key, value in values.items()}


def _train_options(args: argparse.Namespace):
    from peftkit.recipes.option_rules import check_options
    from peftkit.recipes.training import TrainOptions

    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    values = _read_config_file(args.config) if args.config else {}
    if "adapter" in values:
        values["method_options"] = values.pop("adapter")
    for key in values:
        if key not in fields:
            raise ConfigError(f"{args.config}: unknown option '{key}' (options: {', '.join(sorted(fields))})")
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if "method_options" in values:
        check_options({"method_options": values["method_options"]})
    method_options = {**values.get("method_options", {}), **_option_pairs(args.option or [])}
    return TrainOptions(**{**values, **given, "method_options": method_options})


def cmd_train(args: argparse.Namespace) -> int:
    from peftkit.recipes.training import prepare_run, sharded_run

    options = _train_options(args)
    sharded_run(options)  # --fsdp's conditions, checked before anything loads
    if options.recipe is None and options.task != "classification" and (options.init_prompt or options.teacher):
        raise ConfigError("--init-prompt and --teacher apply to classification only")
    if options.recipe is None and options.task == "token-classification" and options.density_loss:
        raise ConfigError("--density-loss applies to classification and causal-lm only")
    prepare_run(options)
    try:
        result = _train(options)
    except KeyboardInterrupt:
        print(f"peftkit: interrupted; {_where_to_resume(options)}", file=sys.stderr)
        return 130
    _print_summary(options, result)
    return 0


def _train(options):
    if options.recipe is not None:
        return _run_recipe(options)
    if options.task == "causal-lm":
        from peftkit.recipes.causal_lm import train_causal_lm

        return train_causal_lm(options)
    if options.task == "token-classification":
        from peftkit.recipes.tagging import train_tagger

        return train_tagger(options).result
    from peftkit.recipes.classification import train_classifier

    return train_classifier(options)


def _where_to_resume(options) -> str:
    """The newest checkpoint an interrupted run left, and how to continue from it."""
    from peftkit.recipes.checkpoints import last_checkpoint
    from peftkit.recipes.output_paths import CHECKPOINTS

    checkpoint = last_checkpoint(Path(options.output) / CHECKPOINTS)
    if checkpoint is None:
        return ("no checkpoint was written" + ("" if options.save_steps else
                                                " (pass --save-steps N to make a run resumable)"))
    return f"the last checkpoint is {checkpoint}; run the same command with --resume to continue from it"


def _run_recipe(options):
    if options.recipe in ("mlm", "self-evolution"):
        from peftkit.recipes.masked_lm import train_masked_lm

        return train_masked_lm(options, objective=options.recipe)
    if options.recipe == "pet":
        from peftkit.recipes.pet import train_pet

        return train_pet(options, pet_pattern(options))
    if options.recipe == "list":
        from peftkit.recipes.self_training import train_list

        return train_list(options, pet_pattern(options), shots=options.shots, unlabelled=options.unlabelled,
                          rounds=options.rounds)
    if options.recipe == "keyphrase":
        from peftkit.recipes.keyphrases import extract_keyphrases, generate_keyphrases

        if options.task == "causal-lm":
            return generate_keyphrases(options).result
        return extract_keyphrases(options).result
    raise ConfigError(f"unknown recipe {options.recipe!r}; peftkit has pet, list, mlm, self-evolution, keyphrase")


def pet_pattern(options):
    """The PET pattern of ``--pattern`` / ``--verbalizer`` (YAML or JSON: {label: word or [words]})."""
    from peftkit.recipes.pet import Pattern

    verbalizer = options.verbalizer
    if isinstance(verbalizer, str):
        try:
            verbalizer = yaml.safe_load(verbalizer)
        except yaml.YAMLError:
            raise ConfigError(f"--verbalizer {options.verbalizer!r} is not YAML / JSON") from None
    if verbalizer is not None and not isinstance(verbalizer, dict):
        raise ConfigError("--verbalizer must map labels to words, e.g. '{positive: great, negative: bad}'")
    words = {str(label): [str(w) for w in (value if isinstance(value, list) else [value])]
             for label, value in (verbalizer or {}).items()}  # empty: each label's own name (Pattern.for_labels)
    return Pattern(options.pattern or Pattern.template, words)


def _print_summary(options, result) -> None:
    from peftkit.core.pretrained import display_name
    from peftkit.recipes.training import is_main_process

    if not is_main_process():
        return
    model_name = display_name(result.model_dir)
    data_name = options.train or ("SST-2 as a chat instruction (bundled)" if options.task == "causal-lm"
                                  else "SST-2 (bundled)")
    what = f"{options.recipe} recipe, " if options.recipe else ""
    share = 100 * result.trainable_parameters / result.total_parameters
    minutes, seconds = divmod(result.wall_seconds, 60)
    answers = f", {len(result.labels)} labels" if result.labels else ""
    print(f"\npeftkit train: {what}{result.method} on {model_name}, {data_name}: {result.train_examples:,} training / "
          f"{result.eval_examples:,} evaluation examples{answers}")
    print(f"  trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,} ({share:.2f}%)")
    if result.held_parameters is not None:
        from peftkit.core.mechanics.sharding import process_count

        print(f"  sharded with FSDP2:   each of {process_count()} processes holds {result.held_parameters:,} of the "
              f"{result.total_parameters:,} parameters")
    split = "dev" if not options.train else "eval"
    if result.accuracy is not None:
        print(f"  {split} accuracy:  {result.accuracy:.4f} ({result.correct}/{result.eval_examples})")
    if result.report is not None:
        from peftkit.tasks.metrics import summary_lines

        for line in summary_lines(result.report):
            print(f"    {line}")
    if result.metric is not None:
        name, value, detail = result.metric
        print(f"  {split} {name}:  {value:.4f} ({detail})")
    if result.eval_loss is not None:
        print(f"  {split} loss:      {result.eval_loss:.4f} (mean per answer token)")
    if result.density is not None:
        from peftkit.objectives.density import DENSITY_THRESHOLD

        print(f"  feed-forward density: {result.density[0]:.4f} before, {result.density[1]:.4f} after "
              f"(share of {split} activations with |a| > {DENSITY_THRESHOLD:.1e})")
    print(f"  wall time:            {int(minutes)}m {seconds:04.1f}s (training {result.train_seconds:.1f}s, "
          f"{result.steps} steps)")
    if result.columns is not None:
        print(f"  columns:              {result.columns}")
    if result.budget is not None:
        print(f"  budget:               {result.budget}")
    if result.batches is not None:
        print(f"  batches:              {result.batches}")
    print(f"  peak memory:          {result.peak_memory_mib:,.0f} MiB")
    if result.reports:
        print(f"  evaluation report:    {', '.join(str(path) for path in result.reports)}")
    if options.recipe in ("mlm", "self-evolution"):
        print(f"  model saved to:       {result.output}/ (a transformers model folder: fine-tune it with --model)")
    else:
        print(f"  adapter saved to:     {result.output}/ ({_format_note(options.method)})")


def _format_note(method: str) -> str:
    from peftkit.core.registry import method_form
    from peftkit.recipes.training import FULL_FINE_TUNING

    if method == FULL_FINE_TUNING:
        return "a transformers model folder"
    if method_form(method)[0].peft_reads:
        return "peft format: peft.PeftModel.from_pretrained reads it"
    return "peft's file layout; peft has no such method, peftkit.PeftModel.from_pretrained reads it"


def _file_columns(parser: argparse.ArgumentParser, labelled: bool) -> None:
    """The options naming a file's columns (default: the adapter's training columns, else found by name)."""
    parser.add_argument("--text-column", help="the text column (default: the adapter's, else found by name)")
    parser.add_argument("--text-pair-column", help="the second text of a pair (likewise)")
    if labelled:
        parser.add_argument("--label-column", help="the label column (default: the adapter's, else found by name, "
                                                   "e.g. label, sentiment, polarity, stars, type)")


def cmd_eval(args: argparse.Namespace) -> int:
    from peftkit.core.checkpoint import read_json
    from peftkit.recipes.training import TASK_FILE

    task_file = Path(args.adapter) / TASK_FILE
    if task_file.is_file() and read_json(task_file, "peftkit task file").get("task") == "token-classification":
        return _eval_tagger(args)
    from peftkit.recipes.classification import evaluate_adapter

    result = evaluate_adapter(args.adapter, args.eval, model=args.model, batch_size=args.batch_size,
                              columns=(args.text_column, args.text_pair_column, args.label_column))
    print(f"peftkit eval: {args.adapter} on {args.eval} ({result.columns.describe()})")
    _print_report(result.report, result.written)
    return 0


def _eval_tagger(args: argparse.Namespace) -> int:
    from peftkit.recipes.tagging import evaluate_tagger

    if args.text_pair_column:
        raise ConfigError("--text-pair-column: a tagging adapter reads one column of words")
    result = evaluate_tagger(args.adapter, args.eval, model=args.model, columns=(args.text_column, args.label_column))
    scores = result.scores
    print(f"peftkit eval: {args.adapter} on {args.eval} (words '{result.columns[0]}', tags '{result.columns[1]}')")
    print(f"  entity F1 {scores.f1:.4f} (P {scores.precision:.4f}, R {scores.recall:.4f}; {scores.correct}/"
          f"{scores.gold} gold entities found)")
    print(f"  by type (F1, gold entities): {scores.describe_types()}")
    print(f"  report written to:    {', '.join(str(path) for path in result.written)}")
    return 0


def _print_report(report, written: list) -> None:
    from peftkit.tasks.metrics import format_report

    for line in format_report(report):
        print(f"  {line}")
    if report.verdict():
        print(f"  warning: {report.verdict()}")
    plot = "" if len(written) > 1 else " (the confusion plot needs matplotlib: pip install 'peftkit[bench]')"
    print(f"  report written to:    {', '.join(str(path) for path in written)}{plot}")


def cmd_predict(args: argparse.Namespace) -> int:
    from peftkit.recipes.classification import predict_file
    from peftkit.tasks.data import write_predictions

    if Path(args.output).resolve() == Path(args.input).resolve():
        raise ConfigError(f"--output {args.output} is the input file; name another")
    predictions = predict_file(args.adapter, args.input, model=args.model, batch_size=args.batch_size,
                               columns=(args.text_column, args.text_pair_column))
    write_predictions(args.output, predictions.rows, predictions.labels)
    counts = {name: sum(row["predicted"] == name for row in predictions.rows) for name in predictions.labels}
    print(f"peftkit predict: {len(predictions.rows):,} rows of {args.input} ({predictions.columns.describe()})")
    print("  predicted:   " + ", ".join(f"{name} {count:,}" for name, count in counts.items()))
    print(f"  written to:  {args.output}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from peftkit.core.pretrained import (
        load_causal_lm,
        load_sequence_classifier,
        resolve_causal_lm_dir,
        resolve_model_dir,
    )
    from peftkit.core.targets import plan
    from peftkit.recipes.training import method_config

    options = _read_config_file(args.config).get("method_options", {}) if args.config else {}
    options = {**options, **_option_pairs(args.option or [])}
    labels = ["0", "1"]
    model_dir = resolve_causal_lm_dir(args.model) if args.task == "causal-lm" else resolve_model_dir(args.model)
    if args.task == "causal-lm":
        config = method_config(args.method, options, "CAUSAL_LM", model_dir, labels)
        model = load_causal_lm(model_dir)[1]
    else:
        config = method_config(args.method, options, "SEQ_CLS", model_dir, labels)
        model = load_sequence_classifier(model_dir, labels)[1]
    print(plan(model, config))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from peftkit.core.checkpoint import read_adapter_config, read_adapter_weights

    config = read_adapter_config(args.adapter)
    tensors, path = read_adapter_weights(args.adapter)
    parameters = sum(t.numel() for t in tensors.values())
    print(f"adapter:     {args.adapter}")
    print(f"method:      {config['peft_type']}")
    print(f"base model:  {config.get('base_model_name_or_path')}")
    for key in ("task_type", "r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "target_modules",
                "modules_to_save"):
        value = config.get(key)
        if isinstance(value, list) and len(value) > 6:
            endings = sorted({name.rsplit(".", 1)[-1] for name in value})
            value = f"{len(value)} modules ending in {', '.join(endings)}"
        if value not in (None, False):
            print(f"{key + ':':<12} {value}")
    print(f"tensors:     {len(tensors)} in {path.name}, {parameters:,} parameters, "
          f"{path.stat().st_size / 1024:,.1f} KiB")
    task_file = Path(args.adapter) / "peftkit_task.json"
    if task_file.is_file():
        from peftkit.core.checkpoint import read_json

        task = read_json(task_file)
        print(f"task:        {task.get('task')}")
        if task.get("labels"):
            print(f"labels:      {', '.join(task['labels'])}")
        if task.get("base_quantization"):
            print(f"base model weights stored in {task['base_quantization']} (QLoRA)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from peftkit.core.checkpoint import read_json
    from peftkit.recipes.output_paths import check_output, staged
    from peftkit.recipes.training import TASK_FILE, load_saved_adapter

    task = read_json(Path(args.adapter) / TASK_FILE, "peftkit task file").get("task")
    base = args.model or read_json(Path(args.adapter) / "adapter_config.json").get("base_model_name_or_path")
    target = check_output(args.output, inputs=(args.adapter, base), replaces_folder=True, overwrite=args.overwrite)
    # QLoRA: the base is quantised as it was trained, then merged into a dequantised copy, with a warning
    tokenizer, peft_model, _ = load_saved_adapter(args.adapter, task, args.model)
    merged = peft_model.merge_and_unload()
    with staged(target) as scratch:  # written aside and renamed into place: a failed save leaves nothing half-done
        merged.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
    print(f"merged model saved to {args.output}/ (an ordinary transformers model folder)")
    return 0


def cmd_vocab_reduce(args: argparse.Namespace) -> int:
    from peftkit.core.pretrained import display_name, load_masked_lm, resolve_model_dir
    from peftkit.recipes.masked_lm import read_passages
    from peftkit.recipes.output_paths import check_output, staged
    from peftkit.recipes.vocabulary import check_scripts, reduce_vocabulary, save_reduced

    if not args.corpus and not args.scripts:
        raise ConfigError("vocab-reduce needs --corpus FILE or --scripts NAMES (e.g. latin)")
    scripts = check_scripts(args.scripts.split(",")) if args.scripts else None
    texts = [t for path in args.corpus or [] for t in read_passages(path, args.text_column)] or None
    model_dir = resolve_model_dir(args.model)
    target = check_output(args.output, inputs=(model_dir,), replaces_folder=True, overwrite=args.overwrite)
    tokenizer, model = load_masked_lm(model_dir)
    total = sum(p.numel() for p in model.parameters())
    model, reduced, report = reduce_vocabulary(model, tokenizer, texts=texts, scripts=scripts)
    with staged(target) as scratch:
        save_reduced(model, reduced, scratch)
    print(f"peftkit vocab-reduce: {display_name(model_dir)}: vocabulary {report['vocabulary_before']:,} -> "
          f"{report['vocabulary_after']:,} tokens; parameters {total:,} -> {total - report['parameters_removed']:,} "
          f"(-{report['parameters_removed']:,}, {100 * report['parameters_removed'] / total:.1f}%)")
    print(f"  model saved to: {args.output}/ (a transformers model folder with its reduced tokenizer)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from peftkit.recipes.causal_lm import generate_text, load_adapter_for_generation

    tokenizer, model = load_adapter_for_generation(args.adapter, model=args.model)
    print(generate_text(tokenizer, model, args.prompt, max_new_tokens=args.max_new_tokens, chat=not args.raw))
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be whole numbers separated by commas, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    return seeds


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from peftkit.bench.report import write_report
    from peftkit.bench.rows import bench_rows
    from peftkit.bench.runner import BenchSettings, environment, run_bench
    from peftkit.core.pretrained import display_name, resolve_model_dir
    from peftkit.recipes.output_paths import check_output

    if args.vs_peft:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ConfigError("--vs-peft needs Hugging Face peft (pip install peft)") from None
    seeds = _seeds(args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    rows = bench_rows(methods, args.options)
    model_dir = resolve_model_dir(args.model)
    check_output(args.output, inputs=(model_dir, args.train, args.eval))
    settings = BenchSettings(
        model=args.model, train=args.train, eval=args.eval, text_column=args.text_column,
        text_pair_column=args.text_pair_column, label_column=args.label_column,
        epochs=1.0 if args.epochs is None else args.epochs,
        max_steps=args.max_steps if args.max_steps is not None else None if args.epochs is not None else 50,
        batch_size=args.batch_size, max_length=args.max_length,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), bf16=args.bf16,
        threads=args.threads)
    run = run_bench(rows, settings, seeds, args.output, vs_peft=args.vs_peft)
    budget = f"{settings.max_steps} steps" if settings.max_steps else f"{settings.epochs:g} epoch(s)"
    title = (f"peftkit bench: {display_name(model_dir)} on {args.train or 'SST-2 (bundled)'}, {budget} of "
             f"{settings.batch_size}, {settings.max_length} tokens, seeds {','.join(map(str, seeds))}, "
             f"{settings.device}")
    files = write_report(run, environment(settings), Path(args.output), title, shlex.join(["peftkit", *args.argv]))
    print(files[1].read_text())
    print(f"raw measurements, table and plots: {', '.join(str(f) for f in files)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="peftkit", description="Parameter-efficient fine-tuning.")
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune an adapter (text classification or causal LM)",
                                formatter_class=MethodListFormatter,
                                description="With no arguments: LoRA on the bundled all-MiniLM-L6-v2, SST-2. With "
                                            "--task causal-lm: SmolLM2-135M-Instruct, SST-2 as a chat instruction.")
    train.add_argument("--task", choices=["classification", "token-classification", "causal-lm"],
                       help="classification (default): text (pair) -> label; token-classification: rows of "
                            "words and IOB2 tags, scored by entity F1; causal-lm: prompt/completion or "
                            "chat 'messages' rows, loss on the completion / assistant turns")
    train.add_argument("--recipe", help="a training procedure: pet (cloze patterns and verbalizers with a "
                                        "masked LM's head, or a causal LM's next token with --task causal-lm); "
                                        "list (LiST: few-shot self-training with lite adapters and meta "
                                        "re-weighting); mlm (adaptive masked-LM training on raw text, --train "
                                        "FILE.txt), self-evolution (the same with self-evolution masking): both "
                                        "write a model folder; keyphrase (rows of title / abstract and "
                                        "keyphrases: BIO extraction, or generation with --task causal-lm)")
    train.add_argument("--pattern", help="pet: the cloze, e.g. '{text} It was {mask}.' (the default)")
    train.add_argument("--verbalizer", help="pet: label -> word(s), e.g. '{positive: [great, good], negative: bad}' "
                                            "(default: each label's name)")
    train.add_argument("--shots", type=int, help="list: labelled examples per class taken from --train (default 16)")
    train.add_argument("--unlabelled", type=int, help="list: how many other training texts serve as unlabelled "
                                                      "data (default 1000)")
    train.add_argument("--rounds", type=int, help="list: self-training rounds (default 2)")
    train.add_argument("--train", help="training file (CSV, TSV, JSONL; .txt for mlm); default: bundled SST-2")
    train.add_argument("--eval", help="evaluation file; default: SST-2 dev, or 10%% held out of --train")
    train.add_argument("--model", help="local transformers model folder; default: bundled all-MiniLM-L6-v2")
    train.add_argument("--method", help="PEFT method (default lora): {methods}")
    train.add_argument("--epochs", type=float,
                       help="passes over the training data (default: until 6,000 rows are seen, 1 to 30)")
    train.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    train.add_argument("--bf16", action="store_true", default=None,
                       help="bfloat16 autocast (CUDA, or a CPU with AVX-512 BF16 / AMX)")
    train.add_argument("--lr", type=float, help="learning rate (default: the method's, e.g. 1e-3 for lora)")
    train.add_argument("--density-loss", type=float, metavar="W",
                       help="add DEFT's density loss with weight W (sparser feed-forward activations)")
    train.add_argument("--init-prompt", metavar="DIR",
                       help="start the soft prompt from a saved prompt adapter's (prompt transfer)")
    train.add_argument("--teacher", metavar="DIR",
                       help="distil the logits of this saved adapter of the same task (PANDA's second term)")
    train.add_argument("--distill-weight", type=float, metavar="BETA", help="weight of the distillation term "
                       "(default 1)")
    train.add_argument("--batch-size", type=int, help="examples per optimizer step, per process "
                       "(default: 8 under 5,000 training rows, 16 under 50,000, else 32)")
    train.add_argument("--max-length", type=int,
                       help="tokens per example (default: the multiple of 64 that holds 99%% of the training rows)")
    train.add_argument("--seed", type=int, help="random seed: initialisation, data order, dropout (default 42)")
    train.add_argument("--output", help="adapter folder to write (default: peftkit-adapter)")
    train.add_argument("--save-steps", type=int, metavar="N", help="checkpoint the trainable state, optimizer, "
                       "schedule and random state every N steps (in OUTPUT/checkpoints; removed when training ends)")
    train.add_argument("--resume", action="store_true", default=None,
                       help="continue from the newest checkpoint in OUTPUT/checkpoints (same options)")
    train.add_argument("--overwrite", action="store_true", default=None,
                       help="replace another run's checkpoints in OUTPUT/checkpoints (without it, such a folder is "
                            "refused unless --resume)")
    train.add_argument("--gradient-checkpointing", action="store_true", default=None,
                       help="recompute each layer's activations in backward (non-reentrant): less memory, more compute")
    train.add_argument("--fsdp", action="store_true", default=None,
                       help="under torchrun / accelerate launch: shard the base model over the processes with FSDP2 "
                       "(each keeps 1/N of its weights) instead of a whole copy each (DDP)")
    train.add_argument("--packing", choices=("auto", "on", "off"),
                       help="causal LM and tagging: padding-free batches, each batch's rows packed end to end "
                            "with attention kept within each row (default auto: where the model allows, else padded)")
    train.add_argument("--text-column", help="the text column (default: found by name, e.g. text, sentence)")
    train.add_argument("--text-pair-column", help="the second text of a pair (default: found by name, e.g. "
                                                  "hypothesis after premise)")
    train.add_argument("--label-column", help="the label column (default: found by name, e.g. label, sentiment, "
                                              "polarity, stars, type)")
    train.add_argument("--eval-text-column", help="the --eval file's text column, where it differs from the "
                                                  "training file's (default: the training file's name, else found "
                                                  "by name)")
    train.add_argument("--eval-text-pair-column", help="the --eval file's second text column (likewise)")
    train.add_argument("--eval-label-column", help="the --eval file's label column (likewise)")
    train.add_argument("--config", help="YAML or JSON file of these options; command-line flags override it")
    train.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                       help="method setting, e.g. -o r=16 -o target_modules=[query,value]")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("eval", help="score a saved classification adapter on a labelled file (accuracy, "
                                                "macro-F1, per-class scores, baselines), or a tagging adapter on "
                                                "tagged rows (entity F1 by type); the report goes to eval.json")
    evaluate.add_argument("--adapter", required=True, help="adapter folder written by peftkit train")
    evaluate.add_argument("--eval", required=True, help="labelled file (CSV, TSV, JSONL)")
    evaluate.add_argument("--model", help="base model folder (default: the one recorded in the adapter)")
    evaluate.add_argument("--batch-size", type=whole_number(1), default=128, help="examples per forward pass")
    _file_columns(evaluate, labelled=True)
    evaluate.set_defaults(run=cmd_eval)

    predict = commands.add_parser("predict", help="label an unlabelled file with a saved classification adapter: "
                                                  "each row's label and probabilities")
    predict.add_argument("--adapter", required=True, help="adapter folder written by peftkit train")
    predict.add_argument("--input", required=True, help="file of texts (CSV, TSV, JSONL); a label column is ignored")
    predict.add_argument("--output", default="predictions.jsonl",
                         help="where to write (default predictions.jsonl): .jsonl adds 'predicted' and "
                              "'probabilities' to each row; .csv adds 'predicted' and a 'p(LABEL)' column per label")
    predict.add_argument("--model", help="base model folder (default: the one recorded in the adapter)")
    predict.add_argument("--batch-size", type=whole_number(1), default=128, help="examples per forward pass")
    _file_columns(predict, labelled=False)
    predict.set_defaults(run=cmd_predict)

    generate = commands.add_parser("generate", help="continue a prompt with a causal-LM adapter")
    generate.add_argument("--adapter", required=True, help="causal-LM adapter folder written by peftkit train")
    generate.add_argument("--prompt", required=True, help="the user turn (wrapped in the chat template unless --raw)")
    generate.add_argument("--model", help="base model folder (default: the one recorded in the adapter)")
    generate.add_argument("--max-new-tokens", type=whole_number(1), default=64, help="most tokens to generate")
    generate.add_argument("--raw", action="store_true", help="use the prompt as written, without the chat template")
    generate.set_defaults(run=cmd_generate)

    planner = commands.add_parser("plan", help="list the modules a method config would hit, changing nothing",
                                  formatter_class=MethodListFormatter)
    planner.add_argument("--model", help="local transformers model folder; default: the bundled model of --task")
    planner.add_argument("--method", default="lora", help="a registered method (default lora): {methods}")
    planner.add_argument("--task", choices=["classification", "causal-lm"], default="classification",
                         help="the model class to plan on: a sequence classifier or a causal LM")
    planner.add_argument("--config", help="YAML or JSON file whose method_options are the method's settings")
    planner.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                         help="method setting, e.g. -o target_modules=all-linear")
    planner.set_defaults(run=cmd_plan)

    info = commands.add_parser("info", help="describe an adapter folder")
    info.add_argument("adapter", help="adapter folder (peftkit's or peft's)")
    info.set_defaults(run=cmd_info)

    vocab = commands.add_parser("vocab-reduce", help="keep the tokens a corpus or scripts need; save a smaller model",
                                description="Vocabulary reduction (MAFT / Load What You Need): text the corpus "
                                            "covers gives the same tokens and hidden states in the smaller model.")
    vocab.add_argument("--model", help="masked-LM model folder (default: bundled all-MiniLM-L6-v2)")
    vocab.add_argument("--corpus", action="append", help="text file(s) whose tokens to keep (.txt, one passage a "
                                                         "line; or CSV / JSONL with --text-column)")
    vocab.add_argument("--text-column", help="the text column of a CSV / JSONL corpus")
    vocab.add_argument("--scripts", help="keep every token written in these Unicode scripts, e.g. latin,arabic")
    vocab.add_argument("--output", required=True, help="folder for the smaller model and its tokenizer")
    vocab.add_argument("--overwrite", action="store_true", help="replace the output folder if it is not empty")
    vocab.set_defaults(run=cmd_vocab_reduce)

    bench = commands.add_parser("bench", help="train every method under one budget and compare them",
                                description="Each method (and full fine-tuning, the reference) trains on the same "
                                            "data and budget in a process of its own; reported per method: "
                                            "trainable parameters, score, step time, throughput, peak and "
                                            "activation memory, inference latency. Rerun with the same --output "
                                            "to continue an interrupted bench.",
                                formatter_class=MethodListFormatter)
    bench.add_argument("--methods", help="comma-separated (default: all; full fine-tuning always runs), of: "
                                         "{methods}")
    bench.add_argument("--options", metavar="YAML", help="method options: {method: {key: value}} or a list of "
                                                         "option sets, one row each (e.g. lora: [{r: 4}, {r: 8}])")
    bench.add_argument("--model", help="local transformers model folder; default: bundled all-MiniLM-L6-v2")
    bench.add_argument("--train", help="training file (CSV, TSV, JSONL); default: bundled SST-2")
    bench.add_argument("--eval", help="evaluation file; default: SST-2 dev, or 10%% held out of --train")
    bench.add_argument("--text-column", help="the text column (default: found by name)")
    bench.add_argument("--text-pair-column", help="the second text of a pair (default: found by name)")
    bench.add_argument("--label-column", help="the label column (default: found by name)")
    bench.add_argument("--max-steps", type=int, help="optimizer steps per run (default 50 unless --epochs)")
    bench.add_argument("--epochs", type=float, help="epochs per run instead of --max-steps")
    bench.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step")
    bench.add_argument("--max-length", type=int, default=128, help="tokens per example")
    bench.add_argument("--seeds", default="42", help="comma-separated; every method runs once per seed")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when there is one")
    bench.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    bench.add_argument("--threads", type=whole_number(1), help="CPU threads per run (default: torch's)")
    bench.add_argument("--vs-peft", action="store_true",
                       help="also run Hugging Face peft's implementation of each method it has; peftkit/peft ratios")
    bench.add_argument("--output", default="peftkit-bench", help="folder for the results (default peftkit-bench)")
    bench.set_defaults(run=cmd_bench)

    merge = commands.add_parser("merge", help="fold an adapter into its base model and save it")
    merge.add_argument("--adapter", required=True, help="adapter folder written by peftkit train")
    merge.add_argument("--output", required=True, help="folder for the merged transformers model")
    merge.add_argument("--model", help="base model folder (default: the one recorded in the adapter)")
    merge.add_argument("--overwrite", action="store_true", help="replace the output folder if it is not empty")
    merge.set_defaults(run=cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # --help and --version end here, before torch is imported
        args.argv = sys.argv[1:] if argv is None else list(argv)
    except SystemExit as end:  # --help, --version (0) or a flag argparse refuses (2, one line)
        return end.code
    warnings.filterwarnings("ignore", category=FutureWarning)
    load_builtins()
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        return args.run(args)
    except PeftkitError as exc:
        print(f"peftkit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return 130
