"""`circuits evaluate PROMPTS|--dataset NAME --out DIR`: graph faithfulness over a dataset (trace
every prompt through trace-batch, ablate outside the graph at a sweep of pruning levels, CPR/CMD,
plot). Distributes like trace-batch: `torchrun --nproc-per-node N -m circuits evaluate ...`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, console, pick_device, print_json
from circuits.cli.options import build_config, given, number_option, with_config_options
from circuits.attribution.config import TraceConfig


def _metric(value: str) -> str:
    import click

    from circuits.studies.faithfulness import METRICS

    if value not in METRICS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(METRICS)}", param_hint="'--metric'")
    return value


@with_config_options(TraceConfig)
def evaluate_cmd(
    prompts: Path = typer.Argument(None, help="Prompts file (text or .jsonl with prompt/target/contrast/id); "
                                   "or give --dataset."),
    dataset: str = typer.Option(None, "--dataset", help="Built-in set: world-addition, world-two-hop, "
                                "smollm2-induction, smollm2-capitals."),
    n: int = number_option(50, "--n", min=1, max=100_000, help="Prompts drawn from --dataset."),
    seed: int = number_option(0, "--seed", min=0, max=2**31 - 1, help="Seed of --dataset's draw."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (graphs, manifest, faithfulness.*)."),
    metric: str = typer.Option("logit-diff", "--metric", parser=_metric, metavar="[logit-diff|prob]",
                               help="m: logit(target) - logit(contrast), or the target's probability."),
    model: str = typer.Option(None, "--model", "-m", help="Model (default: world, or the dataset's model)."),
    transcoders: Path = typer.Option(None, "--transcoders", "-t", help="Transcoder directory (default: the "
                                     "model's default transcoders)."),
    threads: int = number_option(None, "--threads", min=1, max=4096, help="torch threads per rank."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    batch_prompts: int = number_option(1, "--batch-prompts", min=1, max=4096,
                                       help="Prompts whose attribution rows share backward sweeps (as trace-batch's)."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    **settings,
) -> None:
    """Faithfulness of each prompt's graph at 0.1%..100% of its edges, ablating the rest in the local
    replacement model and the real model (zero and mean ablation); CPR, CMD, a plot."""
    from circuits.batch.datasets import dataset as load_dataset
    from circuits.batch.datasets import model_of
    from circuits.batch.inputs import read_prompts
    from circuits.batch.sharding import join
    from circuits.batch.trace_many import check_items
    from circuits.cli.trace_batch import leave, load_on_ranks
    from circuits.errors import CircuitsError
    from circuits.studies.faithfulness_batch import evaluate_dataset
    from safeio import check_output_dir, write_text

    if (prompts is None) == (dataset is None):
        raise CircuitsError("give a prompts file or --dataset NAME (one of them)")
    items = read_prompts(prompts) if prompts is not None else None
    check_output_dir(out)
    config = build_config(TraceConfig, given(TraceConfig, settings))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    info, dev = join(pick_device(device))
    model = model or (model_of(dataset) if dataset else "world")
    rm = load_on_ranks(model, transcoders, dev, dtype, info)
    if items is None:
        items = load_dataset(dataset, n, seed, rm.tokenizer)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            lines = (json.dumps({"id": i.id, "prompt": i.prompt, "target": i.targets[0], "contrast": i.contrast})
                     for i in items)
            write_text(out / "prompts.jsonl", "".join(line + "\n" for line in lines))
    check_items(rm, items, config)
    title = f"{dataset or prompts.name} on {rm.name}, {len(items)} prompts, metric {metric}"
    summary = evaluate_dataset(rm, items, out, metric, config, info=info, progress=not json_out, title=title,
                               batch_prompts=batch_prompts)
    if info.is_main:
        if json_out:
            print_json(summary)
        else:
            for key, c in summary["curves"].items():
                if c["n"]:
                    console.print(f"{key:<12} CPR {c['cpr_mean']:.3f} ± {c['cpr_std']:.3f}   "
                                  f"CMD {c['cmd_mean']:.3f} ± {c['cmd_std']:.3f}   "
                                  f"(n={c['n']}, left out {c['left_out']})"
                                  + (f";  f of means: CPR {c['cpr_of_means']:.3f} CMD {c['cmd_of_means']:.3f}"
                                     if c.get("f_of_means") else ""))
            console.print(f"wrote {out / 'faithfulness.json'}, {out / 'faithfulness.png'}")
    leave(info)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
