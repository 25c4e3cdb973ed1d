"""`circuits models build|list|eval|predict`."""

from __future__ import annotations

import typer

from circuits.cli.common import DEVICE_OPTION, DTYPE_OPTION, HELP, console, pick_device, print_json
from circuits.cli.options import number_option

app = typer.Typer(**HELP, help="Build, list, evaluate and query models.", no_args_is_help=True)


@app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in models and whether they are cached."""
    from circuits.models import list_models

    rows = list_models()
    if json_out:
        print_json(rows)
        return
    for row in rows:
        console.print(f"[bold]{row['name']:<14}[/bold] {row['state']:<10} {row['description']}")
        if row["problem"]:
            console.print(f"{'':<15}{row['problem']}; rebuild: circuits models build {row['name']} --force",
                          markup=False, highlight=False)


@app.command("build")
def build_cmd(
    name: str = typer.Argument(..., help="Built-in model name (see `circuits models list`)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if cached."),
    json_out: bool = typer.Option(False, "--json", help="Print name, path, build_seconds and eval as JSON."),
) -> None:
    """Build (train or convert) a built-in model and cache it under $CIRCUITS_HOME."""
    from circuits.models.registry import build_model, evaluate_model, load_model, BUILTIN_MODELS
    from circuits.models.cache import read_meta

    path = build_model(name, progress=True, force=force)
    meta = read_meta(path)
    out = {"name": name, "path": str(path), "build_seconds": meta.get("build_seconds")}
    if BUILTIN_MODELS[name].evaluate is not None:
        out["eval"] = meta.get("eval") or evaluate_model(load_model(name))
    if json_out:
        print_json(out)
    else:
        console.print(f"built [bold]{name}[/bold] at {path} in {out['build_seconds']} s")
        for key, value in out.get("eval", {}).items():
            console.print(f"  {key}: {value}")


@app.command("eval")
def eval_cmd(
    name: str = typer.Argument(..., help="Built-in model name."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = DEVICE_OPTION,
) -> None:
    """Evaluate a built-in model on its held-out sets."""
    from circuits.models.registry import evaluate_model, load_model

    loaded = load_model(name, device=pick_device(device))
    out = {"name": name, "path": str(loaded.path), "build_seconds": loaded.meta.get("build_seconds"),
           "eval": evaluate_model(loaded)}
    if json_out:
        print_json(out)
    else:
        for key, value in out["eval"].items():
            console.print(f"{key}: {value}")


@app.command("predict")
def predict_cmd(
    name: str = typer.Argument(..., help="Model: built-in name, local checkpoint dir or hub id."),
    prompt: str = typer.Argument(..., help="Prompt text."),
    top: int = number_option(5, "--top", min=1, max=10_000, help="How many tokens to show."),
    json_out: bool = typer.Option(False, "--json", help="Print a list of {token, id, prob}."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Print the most likely next tokens after PROMPT."""
    from circuits.models.registry import load_model
    from circuits.replacement.prompts import check_text, next_token_distribution

    check_text(prompt)
    loaded = load_model(name, device=pick_device(device), dtype=dtype)
    rows = next_token_distribution(loaded.model, prompt, top)
    if json_out:
        print_json(rows)
        return
    for row in rows:
        console.print(f"{row['prob']:8.4f}  {row['token']!r}  (id {row['id']})")


@app.command("corpus")
def corpus_cmd(
    name: str = typer.Argument(..., metavar="NAME", help="Built-in model (its default corpus) or corpus name "
                               "(python-docstrings, smollm2-prose, smollm2-mix)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even if cached."),
    regenerate: bool = typer.Option(False, "--regenerate", help="For a shipped corpus (smollm2-prose): make it "
                                    "again with its generator (minutes) instead of unpacking the shipped copy, "
                                    "and report whether the text equals it. Implies --rebuild."),
    json_out: bool = typer.Option(False, "--json", help="Print the corpus record as JSON."),
) -> None:
    """Build (offline) a built-in text corpus under $CIRCUITS_HOME/corpora and count its tokens with
    the model's tokenizer when NAME is a model. Training and fidelity use it by default. For `world`
    and `world-tiny`, whose corpus is their own generator (nothing to build), print its size."""
    from circuits.corpora.builtin import BUILTIN_CORPORA, builtin_corpus_file, corpus_record
    from circuits.errors import CircuitsError
    from circuits.models.registry import BUILTIN_MODELS

    with_corpus = {m: spec for m, spec in BUILTIN_MODELS.items() if spec.corpus is not None}
    model_corpora = {m: spec.text_corpus for m, spec in with_corpus.items()}
    if name in model_corpora and not model_corpora[name]:
        record = _generated_corpus_record(name)
    else:
        corpus = model_corpora.get(name) or name
        if corpus not in BUILTIN_CORPORA:
            known = ", ".join([*model_corpora, *BUILTIN_CORPORA])
            raise CircuitsError(f"no built-in corpus '{name}' (known: {known})")
        path = builtin_corpus_file(corpus, rebuild=rebuild, regenerate=regenerate)
        record = {"path": str(path), **corpus_record(corpus)}
        if name in model_corpora:
            from circuits.models.registry import load_model

            tokenizer = load_model(name, progress=True).tokenizer
            with path.open(encoding="utf-8") as f:
                record[f"tokens_{name}"] = sum(len(tokenizer(line.rstrip("\n"), add_special_tokens=False)["input_ids"])
                                               for line in f)
    if json_out:
        print_json(record)
        return
    for key, value in record.items():
        console.print(f"  {key}: {value}", markup=False, highlight=False)


def _generated_corpus_record(name: str) -> dict:
    """The size of a built-in model's generated corpus (`world`): distinct lines and tokens of its
    training and held-out streams (the streams sample these with repetition)."""
    from circuits.corpora.sequences import corpus_sequences
    from circuits.models.registry import load_model

    loaded = load_model(name, progress=True)
    record: dict = {"name": name, "source": f"the {name} model's own corpus generator (circuits/models/world), "
                    "sampled endlessly; every 10th line of each pool is held out"}
    for split, heldout in (("train", False), ("heldout", True)):
        seqs, _ = corpus_sequences(loaded, None, loaded.model.cfg.n_ctx, heldout)
        pools = getattr(seqs, "pools", [])
        record[f"documents_{split}"] = sum(len(pool) for pool in pools)
        record[f"tokens_{split}"] = sum(len(s) for pool in pools for s in pool)
    return record
