"""What the two language-model plans (:mod:`xseq.lm.plan_lines`, :mod:`xseq.lm.plan_stream`) do alike on the
command line: ``sample``, ``info``, the report at the end of ``xseq train`` and the lines ``evaluate`` prints.

A plan of another kind of model (:mod:`xseq.lm.plan_pairs`) implements the same hooks its own way: the command
line (:mod:`xseq.lm.cli`) only calls them.
"""

from __future__ import annotations

from . import resources
from .model_schema import model_input
from .sampling import SamplingError
from .trainer import saved_kind
from .usage import MAX_LEN, SAMPLES, TEMPERATURE, UsageError, check_fits, model_shape, perplexity, show


class LanguageModelPlan:
    """The hooks a language-model plan shares; a subclass sets ``MODEL``, ``unit``, ``describe``,
    ``print_history``, ``note_prefix`` and ``evaluate_model``."""

    def owns(self, meta):
        """Whether a checkpoint's metadata is this plan's: its training state's kind, else its model's input."""
        state = meta.get("trainer")
        if isinstance(state, dict):
            return saved_kind(state) == self.NAME
        return model_input(meta) == self.MODEL.INPUT

    def add_commands(self, commands):
        """No command of its own: ``train``, ``sample``, ``evaluate`` and ``info`` serve it."""

    def after_training(self, trainer, args):
        """What ``xseq train`` prints at the end on rank 0: the validation loss and samples."""
        val = trainer.history[-1]["val_loss"]
        print(f"validation loss: {val:.4f} nats per {self.unit(trainer.model)} (perplexity {perplexity(val):.2f})")
        if args.samples:
            try:
                samples = trainer.model.sample(args.samples, temperature=TEMPERATURE, max_len=MAX_LEN,
                                               seed=trainer.config.seed)
            except SamplingError as exc:
                print(f"samples: none: {exc}")
                return
            print("samples:")
            for text in samples:
                show(f"  {text}")

    def sample(self, args, model):
        """``xseq sample``: ``-n`` samples, one a line."""
        shape = model_shape(model)
        check_fits(model.xp, lambda **v: resources.sampling_bytes(**shape, **v),
                   {"n": args.n, "max_len": args.max_len},
                   {"n": ("-n", args.n, SAMPLES), "max_len": ("--max-len", args.max_len, MAX_LEN)}, "sampling",
                   f"{args.n:,} samples of up to {args.max_len:,} {self.unit(model)}s drawn together")
        self.note_prefix(model, args.prefix)
        try:
            samples = model.sample(args.n, temperature=args.temperature, top_k=args.top_k, prefix=args.prefix,
                                   max_len=args.max_len, seed=args.seed)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for text in samples:
            show(text)

    def evaluate(self, args, model):
        """``xseq evaluate``'s lines (None on a rank that prints nothing)."""
        scored = self.evaluate_model(args, model)
        if scored is None:
            return None
        what, loss = scored
        return [what, f"cross-entropy: {loss:.4f} nats per {self.unit(model)}", f"perplexity: {perplexity(loss):.3f}"]

    def info(self, model, meta, arrays):
        """``xseq info``: the model, its vocabulary, its size and its training history."""
        c, vocab = model.config(), model.vocab
        inside, after = self.describe(c)
        show(f"model: {c['cell']}, hidden size {c['hidden_size']}, {c['num_layers']} "
             f"layer{'s' * (c['num_layers'] > 1)}{inside}, dropout {c['dropout']:g}, {model.dtype_name}{after}")
        shown = "".join(vocab.tokens[3:]) if vocab.level == "char" else " ".join(vocab.tokens[3:13]) + " ..."
        tokenizer = "" if vocab.tokenizer is None else f", {vocab.tokenizer} tokenizer"
        show(f"vocabulary: {len(vocab)} tokens ({vocab.level} level{tokenizer}): <pad> <unk> <eos> {shown!r}")
        show(f"parameters: {model.num_parameters():,}")
        self.show_history(meta, arrays)

    def show_history(self, meta, arrays):
        """The training state's lines of ``xseq info`` (through ``print_history``)."""
        state = meta.get("trainer")
        if not isinstance(state, dict):
            show("training: no training state recorded")
            return
        self.print_history(state, arrays.get("train/losses"))
