"""The *pairs* plan of the command line: ``xseq train --task seq2seq``, ``evaluate``, ``translate``, ``sample`` and
``info`` for a sequence-to-sequence model with attention (:class:`~xseq.seq2seq.model.Seq2Seq`).

``xseq train PAIRS.tsv --task seq2seq`` trains on one pair a line (``source<TAB>target``); without a file, on the
built-in dates (the course's "Neural Machine Translation with Attention": "Tuesday 3 May 1979" -> "1979-05-03"),
the held-out dates named by no training pair. The data is :class:`~xseq.lm.pairs_data.PairData` on the one
:class:`~xseq.lm.trainer.Trainer`. See :mod:`xseq.lm.plan_lines` for what a plan is.
"""

from __future__ import annotations

import argparse
import sys

from ..backends.arrays import backend as backend_named
from . import resources
from .checkpoint import load_checkpoint
from .corpus import CorpusError
from .files import file_identity
from .outputs import check_writable, pyplot, save_figure
from .pairs_data import BUILTIN_DATES, PairData, evaluate_pairs, exact_match, read_pairs
from .plan_lines import RECIPE_OPTIONS
from .recipe import DEFAULT_SEQ2SEQ, Seq2SeqConfig
from .trainer import Trainer, saved_kind
from .usage import UsageError, check_fits, check_resumed_recipe, perplexity, positive_int, printable, run_length
from .usage import say, show, show_losses, show_validation

# The options of this plan alone (another plan refuses them), and the recipe's options it shares.
PAIR_OPTIONS = {"decoder_size": "--decoder-hidden", "attention_size": "--attention", "feed_previous": "--no-feed",
                "pairs": "--pairs", "beam": "--beam"}
PAIR_RECIPE_OPTIONS = {**{k: v for k, v in RECIPE_OPTIONS.items() if k != "max_seq_len"},
                       "level": "--level", "embed_size": "--embed", **PAIR_OPTIONS}
SHARED = ("embed_size",)  # another plan's options this one uses too
TRANSLATIONS_SHOWN = 5
DEFAULTS = Seq2SeqConfig()


class PairPlan:
    """Source and target pairs, padded batches in a shuffled order, a sequence-to-sequence model."""

    NAME = "seq2seq"
    MODEL = PairData.MODEL
    DESCRIPTION = "sequence-to-sequence models (--task seq2seq)"
    OPTIONS = PAIR_OPTIONS
    WHY_NEW = "this is a sequence-to-sequence model (--task seq2seq)"
    SELECTED_BY = "--task seq2seq"

    def selected_by(self, args):
        """``--task seq2seq``."""
        return getattr(args, "task", None) == "seq2seq"

    def owns(self, meta):
        """A checkpoint of a sequence-to-sequence model (or of its run)."""
        state = meta.get("trainer")
        if isinstance(state, dict):
            return saved_kind(state) == self.NAME
        return meta.get("format") == self.MODEL.MODEL_FORMAT

    def check_options(self, args, why, foreign):
        """UsageError for an option of another plan (its embedding size excepted: ``--embed`` sizes both of this
        model's embeddings)."""
        for key, (flag, description) in foreign.items():
            if key not in SHARED and getattr(args, key) is not None:
                raise UsageError(f"{flag} applies to {description}; {why}")

    def unit(self, model):
        """What the model predicts, for messages."""
        return "token"

    # ------------------------------------------------------------------ options and commands

    def add_train_arguments(self, parser):
        """``--task`` and this plan's own options of ``xseq train``."""
        parser.add_argument("--task", choices=("lm", "seq2seq"),
                            help="lm: a language model (default); seq2seq: a sequence-to-sequence model with "
                                 "attention on source<TAB>target pairs (the built-in dates without a file)")
        group = parser.add_argument_group(
            "sequence-to-sequence models (--task seq2seq)",
            "CORPUS holds one pair a line, source<TAB>target; without it, the built-in dates ('Tuesday 3 May 1979' "
            "-> '1979-05-03'). --hidden is the encoder's size per direction, --embed the embeddings', --level the "
            f"tokens of both sides (defaults: hidden {DEFAULT_SEQ2SEQ['hidden_size']}, batch "
            f"{DEFAULT_SEQ2SEQ['batch_size']}, adam lr {DEFAULT_SEQ2SEQ['lr']:g}, {DEFAULT_SEQ2SEQ['epochs']} epochs)")
        group.add_argument("--decoder-hidden", type=positive_int, dest="decoder_size", metavar="N_S",
                           help=f"the decoder LSTM's size n_s (default {DEFAULT_SEQ2SEQ['decoder_size']})")
        group.add_argument("--attention", type=positive_int, dest="attention_size", metavar="N",
                           help="units of the attention's energy layer (default 10, the course's)")
        group.add_argument("--no-feed", action="store_false", default=None, dest="feed_previous",
                           help="feed the decoder the context alone, as the course does (default: the context and "
                                "the previous target token)")
        group.add_argument("--beam", type=positive_int, metavar="N",
                           help="beam width of the decoding after training (default 1: greedy)")
        group.add_argument("--pairs", type=_at_least_two, metavar="N",
                           help=f"pairs of the built-in dates, the held-out ones included (default "
                                f"{DEFAULT_SEQ2SEQ['pairs']})")

    def add_evaluate_arguments(self, parser):
        """``--beam`` of ``xseq evaluate``."""
        parser.add_argument("--beam", type=positive_int, metavar="N",
                            help="sequence-to-sequence models: decode with a beam of N (default 1: greedy)")

    def add_commands(self, commands):
        """``xseq translate``."""
        translate = commands.add_parser("translate", help="translate texts with a sequence-to-sequence model",
                                        description="Print one translation a line; --plot-attention draws the "
                                                    "attention map of the first.")
        translate.add_argument("model", metavar="MODEL", help="checkpoint written by xseq train --task seq2seq")
        translate.add_argument("texts", nargs="+", metavar="TEXT", help="source texts, one argument each")
        translate.add_argument("--beam", type=positive_int, default=1, metavar="N",
                               help="beam width (default 1: greedy decoding)")
        translate.add_argument("--plot-attention", dest="plot_attention", metavar="PNG",
                               help="write the attention map of the first translation (needs matplotlib)")
        translate.add_argument("--backend", choices=("auto", "numpy", "cupy", "torch"), default="auto",
                               help="array library (default auto)")
        translate.set_defaults(func=self.cmd_translate)

    # ------------------------------------------------------------------ train

    def trainer(self, args, xp, resumed):
        """The Trainer of ``xseq train --task seq2seq``: resumed from ``resumed`` (arrays, meta) or new."""
        given = {key: getattr(args, key) for key in PAIR_RECIPE_OPTIONS if getattr(args, key) is not None}
        pairs, source = _pairs(args.corpus)
        if resumed is not None:
            arrays, meta = resumed
            trainer = Trainer.restore(arrays, meta, PairData, backend=xp, epochs=args.epochs, steps=args.steps,
                                      where=f"checkpoint {args.resume!r}", comm=args.comm, pairs=pairs,
                                      source=source)
            check_resumed_recipe(given, trainer.config, PAIR_RECIPE_OPTIONS)
            _check_training_fits(trainer, args.samples, xp, resumed=True)
            return trainer
        try:
            config = Seq2SeqConfig(epochs=args.epochs, steps=args.steps, **given)
            trainer = Trainer(PairData(pairs, config, source=source), backend=xp, comm=args.comm)
        except (ValueError, CorpusError) as exc:
            raise UsageError(str(exc)) from None
        _check_training_fits(trainer, args.samples, xp, resumed=False)
        return trainer

    def print_plan(self, trainer):
        c, model, data = trainer.config, trainer.model, trainer.data
        resumed = f", resuming at step {trainer.step}" if trainer.step else ""
        feed = "context and previous token" if c.feed_previous else "context only"
        say(f"training seq2seq: {c.cell} encoder (hidden {c.hidden_size} x 2 directions, {c.num_layers} "
            f"layer{'s' * (c.num_layers > 1)}), LSTM decoder {c.decoder_size} fed the {feed}, attention "
            f"{c.attention_size}, embeddings {c.embed_size}, {model.num_parameters():,} parameters, "
            f"{model.backend_name} {model.dtype_name}) on {trainer.source}: {len(data.train_ids)} training + "
            f"{len(data.val_ids)} held-out pairs, {len(model.source_vocab)} source and {len(model.target_vocab)} "
            f"target tokens ({c.level} level); {trainer.total_steps} steps of {c.batch_size} "
            f"({trainer.steps_per_epoch} per epoch){resumed}")

    def after_training(self, trainer, args):
        """The validation loss, the exact match of the held-out pairs and a few of their translations."""
        model, data, beam = trainer.model, trainer.data, trainer.config.beam
        val = trainer.history[-1]["val_loss"]
        print(f"validation loss: {val:.4f} nats per token (perplexity {perplexity(val):.2f})")
        decoding = "greedy" if beam == 1 else f"beam {beam}"
        print(f"exact match: {100 * exact_match(model, data.val_pairs, beam=beam):.2f}% of "
              f"{len(data.val_pairs)} held-out pairs ({decoding})")
        shown = data.val_pairs[:min(args.samples, TRANSLATIONS_SHOWN)]
        if shown:
            outputs, _ = model.translate([s for s, _ in shown], beam=beam)
            print("translations:")
            for (text, target), output in zip(shown, outputs):
                mark = "" if output == target else f"  (expected {target})"
                show(f"  {text} -> {output}{mark}")

    # ------------------------------------------------------------------ evaluate, translate, sample, info

    def evaluate(self, args, model):
        """``xseq evaluate MODEL PAIRS.tsv``: cross-entropy per target token and exact match (every rank scores a
        share; rank 0 prints)."""
        if getattr(args, "max_seq_len", None) is not None:
            raise UsageError(f"--max-seq-len applies to line models; {args.model} is a sequence-to-sequence model")
        pairs, _ = _pairs(args.corpus, required=True)
        beam = args.beam or 1
        ids = [(model.source_vocab.encode(s), model.target_vocab.encode(t)) for s, t in pairs]
        loss = evaluate_pairs(model, ids, comm=args.comm)
        match = exact_match(model, pairs, beam=beam, comm=args.comm)
        if args.comm.rank != 0:
            return None
        return [f"{args.corpus}: {len(pairs)} pairs, {sum(len(t) + 1 for _, t in ids):,} target tokens",
                f"cross-entropy: {loss:.4f} nats per token", f"exact match: {100 * match:.2f}% "
                f"({'greedy' if beam == 1 else f'beam {beam}'})"]

    def cmd_translate(self, args):
        """``xseq translate MODEL TEXT...``."""
        arrays, meta = load_checkpoint(args.model)
        if not self.owns(meta):
            raise UsageError(f"{args.model} holds a language model; translate needs a sequence-to-sequence model "
                             "(xseq train --task seq2seq)")
        plt = None
        if args.plot_attention is not None:
            if file_identity(args.plot_attention) == file_identity(args.model):
                raise UsageError(f"--plot-attention {args.plot_attention!r} is the same file as MODEL: writing it "
                                 "would destroy it; give --plot-attention another file")
            plt = pyplot()
            check_writable(args.plot_attention, "--plot-attention")
        model = self.MODEL.from_checkpoint(arrays, meta, backend=backend_named(args.backend),
                                           where=f"checkpoint {str(args.model)!r}")
        try:
            outputs, attention = model.translate(args.texts, beam=args.beam)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for output in outputs:
            show(output)
        if plt is not None:
            plot_attention(plt, model, args.texts[0], outputs[0], attention[0], args.plot_attention)
            print(f"attention map written to {args.plot_attention}", file=sys.stderr)
        return 0

    def sample(self, args, model):
        """``xseq sample`` on a sequence-to-sequence model: translations of ``--prefix`` drawn from the model."""
        if not args.prefix:
            raise UsageError("a sequence-to-sequence model samples translations of a source text: give --prefix "
                             "TEXT (xseq translate gives the likeliest one)")
        try:
            texts = model.sample([args.prefix] * args.n, temperature=args.temperature, top_k=args.top_k,
                                 max_len=args.max_len, seed=args.seed)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for text in texts:
            show(text)

    def info(self, model, meta, arrays):
        """``xseq info``: the model, the two vocabularies, its size and its training history."""
        c = model.config()
        feed = "the context and the previous token" if c["feed_previous"] else "the context only"
        show(f"model: sequence to sequence with attention; {c['cell']} encoder, hidden size {c['hidden_size']} x 2 "
             f"directions, {c['num_layers']} layer{'s' * (c['num_layers'] > 1)}; LSTM decoder {c['decoder_size']} "
             f"fed {feed}; attention {c['attention_size']}; embeddings {c['embed_size']}; dropout "
             f"{c['dropout']:g}; {model.dtype_name}")
        for side, vocab in (("source", model.source_vocab), ("target", model.target_vocab)):
            shown = "".join(vocab.tokens[3:]) if vocab.level == "char" else " ".join(vocab.tokens[3:13]) + " ..."
            show(f"{side} vocabulary: {len(vocab)} tokens ({vocab.level} level): <pad> <unk> <eos> {shown!r}")
        show(f"parameters: {model.num_parameters():,}")
        state = meta.get("trainer")
        if not isinstance(state, dict):
            show("training: no training state recorded")
            return
        r, corpus = state["config"], state["corpus"]
        clip = "none" if not r["clip"] else f"{r['clip_mode']} {r['clip']:g}"
        show(f"recipe: {r['optimizer']} lr {r['lr']:g}, batch {r['batch_size']}, clip {clip}, validation fraction "
             f"{r['val_fraction']:g}, beam {r['beam']}, seed {r['seed']}")
        show(f"corpus: {corpus['source']}; {corpus['sequences']} pairs, sha256 {corpus['sha256'][:12]}")
        show(f"trained: {state['step']} steps ({state['epoch']} whole epoch{'s' * (state['epoch'] != 1)}), "
             f"{state['tokens_seen']:,} target tokens, {state['seconds']:.1f} s")
        show_losses(arrays.get("train/losses"), "step")
        show_validation(state["history"], with_perplexity=False)


def _at_least_two(text):
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 (one pair is held out); got {text!r}")
    return value


def _pairs(path, required=False):
    """``(pairs, description)`` of a PAIRS argument: None and the built-in dates when no file is given."""
    if path is None:
        if required:
            raise UsageError("give the PAIRS file to score")
        return None, BUILTIN_DATES
    try:
        return read_pairs(path), path
    except CorpusError as exc:
        raise UsageError(str(exc)) from None


def _check_training_fits(trainer, samples, xp, *, resumed):
    """Refuse, before any work, a run whose memory (weights and their copies, one batch's activations) or length
    is beyond this machine."""
    c, model, data = trainer.config, trainer.model, trainer.data
    length, total_steps = run_length(c, trainer.steps_per_epoch, resumed)
    T_x = max(len(s) for s, _ in data.train_ids + data.val_ids)
    T_y = max(len(t) for _, t in data.train_ids + data.val_ids) + 1
    V_y = len(model.target_vocab)

    def need(batch_size, hidden_size, decoder_size, total_steps):
        per_example = T_x * (c.embed_size + 12 * hidden_size * c.num_layers + c.attention_size) + T_y * (
            12 * decoder_size + 2 * V_y + 4 * hidden_size + 2 * T_x)
        item = resources.DTYPE_BYTES[c.dtype]
        return (resources.PARAMETER_COPIES * model.num_parameters() * item + 4 * batch_size * per_example * item
                + resources.BYTES_PER_STEP * total_steps)

    values = {"batch_size": c.batch_size, "hidden_size": c.hidden_size, "decoder_size": c.decoder_size,
              "total_steps": total_steps}
    options = {"total_steps": (*length, DEFAULT_SEQ2SEQ["epochs"] * trainer.steps_per_epoch)}
    if not resumed:
        options.update({key: (PAIR_RECIPE_OPTIONS[key], values[key], getattr(DEFAULTS, key))
                        for key in ("batch_size", "hidden_size", "decoder_size")})
    check_fits(xp, need, values, options, "the run",
               f"{model.num_parameters():,} parameters, batches of {c.batch_size} pairs of up to {T_x} and {T_y} "
               f"tokens, {total_steps:,} steps")


def plot_attention(plt, model, text, output, weights, path):
    """The attention map of one translation: the source's tokens along x, the output's (and ``<eos>``) along y."""
    source = model.source_vocab.tokenize(text)
    target = [*model.target_vocab.tokenize(output), "<eos>"]
    rows, cols = weights.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * cols + 1.5), max(3, 0.35 * rows + 1.2)))
    ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_xticks(range(cols), [printable(t) for t in source[:cols]], fontsize=8)
    ax.set_yticks(range(rows), [printable(t) for t in target[:rows]], fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(f"{printable(text)} -> {printable(output)}", fontsize=9)
    save_figure(plt, fig, path, "--plot-attention")

