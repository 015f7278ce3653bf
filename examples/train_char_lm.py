"""Train a tiny character-level GPT with the Accelerate API, on overdrive.

The script is an ordinary Accelerate training loop; only the import line says ``overdrive``. It trains on a text
corpus generated deterministically from a small grammar (no download), evaluates once per epoch with
``gather_for_metrics`` and prints loss, accuracy and global throughput. A progress bar (main process only) shows
the step rate and samples/s; the curves go to ``--project_dir`` (default ``runs/char_lm``) as TensorBoard event files
when ``tensorboard`` is installed and always as ``log.jsonl``: ``tensorboard --logdir runs/char_lm``.

Run it (two CPU processes: about 30-60 s on 2 cores, launch included)::

    overdrive launch --num_processes 2 examples/train_char_lm.py
    overdrive launch --num_processes 2 examples/train_char_lm.py --epochs 3 --lr 3e-3
    python examples/train_char_lm.py            # one process

Options: --epochs, --batch_size (per process), --lr, --seq_len, --grad_accum, --mixed_precision
(no/fp16/bf16; default: whatever the launcher or environment chose), --seed, --max_steps (stop after this many
optimizer steps), --log_every, --project_dir.

The last line reads ``final eval loss X (start Y)``; a uniform guess over the characters would score ln(vocab).
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from overdrive import Accelerator
from overdrive.progress import TrainingProgress
from overdrive.tracking import get_available_trackers
from overdrive.utils import set_seed

# The corpus is fixed by its own seed so that every process (and every --seed) trains on the same text.
CORPUS_SEED = 1234


# --------------------------------------------------------------------------------------------------- the data
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "hare", "wolf", "mole", "crow", "deer", "frog", "lynx"]
HOMES = {  # each animal always lives in the same place: a fact the model can pick up
    "cat": "house", "dog": "yard", "fox": "forest", "owl": "barn", "bear": "cave", "hare": "meadow",
    "wolf": "hills", "mole": "garden", "crow": "field", "deer": "valley", "frog": "pond", "lynx": "mountains",
}
COLOURS = ["red", "blue", "green", "brown", "grey", "white", "black", "yellow"]
SIZES = ["small", "big", "old", "young", "quick", "slow", "quiet", "loud"]
VERBS = ["sees", "follows", "finds", "chases", "watches", "greets", "helps", "avoids"]
THINGS = ["ball", "stone", "leaf", "stick", "apple", "feather", "shell", "acorn"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _sentence(rng: random.Random) -> str:
    """One sentence from a small grammar: facts, actions, counting and sums, so there is structure to learn."""
    a, b = rng.choice(ANIMALS), rng.choice(ANIMALS)
    kind = rng.randrange(5)
    if kind == 0:
        return f"the {rng.choice(SIZES)} {a} lives in the {HOMES[a]}."
    if kind == 1:
        return f"the {rng.choice(SIZES)} {a} {rng.choice(VERBS)} the {rng.choice(COLOURS)} {rng.choice(THINGS)}."
    if kind == 2:
        return f"a {a} {rng.choice(VERBS)} a {b} near the {HOMES[b]}."
    if kind == 3:
        x, y = rng.randrange(5), rng.randrange(5)
        return f"{NUMBER_WORDS[x]} plus {NUMBER_WORDS[y]} is {NUMBER_WORDS[x + y]}."
    n = rng.randrange(1, 4)
    return "the " + a + " counts " + " ".join(NUMBER_WORDS[1:n + 2]) + "."


def make_corpus(num_chars: int, seed: int = CORPUS_SEED) -> str:
    """Sentences from the grammar, joined by spaces, until ``num_chars`` characters (same text on every call)."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < num_chars:
        s = _sentence(rng)
        parts.append(s)
        total += len(s) + 1
    return " ".join(parts)[:num_chars]


class CharChunks(Dataset):
    """Non-overlapping windows of ``seq_len + 1`` characters: inputs are the first ``seq_len``, targets shifted by one."""

    def __init__(self, ids: torch.Tensor, seq_len: int) -> None:
        self.ids, self.seq_len = ids, seq_len
        self.n = (len(ids) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.ids[i * self.seq_len: (i + 1) * self.seq_len + 1]
        return chunk[:-1], chunk[1:]


# -------------------------------------------------------------------------------------------------- the model
class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then an MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        # is_causal: position t attends only to positions <= t, which is what makes this a language model
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token + position embeddings, a stack of blocks, a final norm and a linear head over the vocabulary."""

    def __init__(self, vocab: int, seq_len: int, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # logits, shape (batch, seq_len, vocab)


# ----------------------------------------------------------------------------------------------- the training
def evaluate(model: nn.Module, eval_dl: DataLoader, accelerator: Accelerator) -> tuple[float, float, int]:
    """Mean loss and accuracy over the whole eval set, from per-sequence values gathered on every process."""
    model.eval()
    losses, accs = [], []
    with torch.no_grad():
        for x, y in eval_dl:
            logits = model(x)
            per_token = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (batch, seq_len)
            per_seq_loss = per_token.float().mean(dim=1)
            per_seq_acc = (logits.argmax(dim=-1) == y).float().mean(dim=1)
            # gather_for_metrics drops the duplicates the sampler added to even out the last batch
            seq_loss, seq_acc = accelerator.gather_for_metrics((per_seq_loss, per_seq_acc))
            losses.append(seq_loss)
            accs.append(seq_acc)
    model.train()
    all_losses, all_accs = torch.cat(losses), torch.cat(accs)
    return all_losses.mean().item(), all_accs.mean().item(), all_losses.numel()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a tiny character-level GPT with the Accelerate API.")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=32, help="sequences per process per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--grad_accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: what the launcher / environment / config file says")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--log_every", type=int, default=25, help="print the train loss every N optimizer steps")
    p.add_argument("--project_dir", default="runs/char_lm", help="where the TensorBoard / JSONL logs go")
    p.add_argument("--corpus_chars", type=int, default=240_000, help="size of the generated corpus")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    # JSON lines always; TensorBoard when its package is installed (`pip install tensorboard`).
    trackers = ["jsonl"] + [t for t in ("tensorboard",) if t in get_available_trackers()]
    accelerator = Accelerator(gradient_accumulation_steps=args.grad_accum, mixed_precision=args.mixed_precision,
                              log_with=trackers, project_dir=args.project_dir)
    accelerator.init_trackers("char_lm", config=vars(args))
    set_seed(args.seed)

    text = make_corpus(args.corpus_chars)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(ids))
    train_ds, eval_ds = CharChunks(ids[:split], args.seq_len), CharChunks(ids[split:], args.seq_len)
    train_dl = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True)
    eval_dl = DataLoader(eval_ds, batch_size=2 * args.batch_size)

    model = TinyGPT(len(chars), args.seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # The prepared scheduler advances once per process per optimizer step (each process saw its own batch),
    # so its length is counted in batches of the un-prepared loader, divided by the accumulation.
    sched_steps = math.ceil(len(train_dl) / args.grad_accum) * args.epochs
    if args.max_steps is not None:
        sched_steps = min(sched_steps, args.max_steps * accelerator.num_processes)
    warmup = max(1, sched_steps // 20)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, sched_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine down to 10% of --lr

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(
        model, optimizer, train_dl, eval_dl, scheduler
    )

    n_params = sum(p.numel() for p in model.parameters())
    accelerator.print(
        f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed_precision={accelerator.mixed_precision}; "
        f"vocab {len(chars)}, {n_params / 1e3:.0f}k params; {len(train_ds)} train / {len(eval_ds)} eval sequences "
        f"of {args.seq_len} chars; {len(train_dl)} steps/epoch/process, batch {args.batch_size}/process"
    )
    start_loss, start_acc, _ = evaluate(model, eval_dl, accelerator)
    accelerator.print(f"epoch 0: eval loss {start_loss:.4f}  acc {start_acc:.3f}  (uniform guess: {math.log(len(chars)):.4f})")

    accelerator.log({"eval/loss": start_loss, "eval/accuracy": start_acc}, step=0)

    opt_steps = 0
    eval_loss = start_loss
    total_steps = len(train_dl) // args.grad_accum * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    progress = TrainingProgress(accelerator, total=total_steps, desc="train")
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)
        batches = 0
        for x, y in progress.wrap(train_dl):
            with accelerator.accumulate(model):
                logits = model(x)
                loss = F.cross_entropy(logits.transpose(1, 2), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach().float()
            batches += 1
            if accelerator.sync_gradients:
                opt_steps += 1
                progress.step(samples=len(x) * args.grad_accum, tokens=x.numel() * args.grad_accum)
                if args.log_every and opt_steps % args.log_every == 0:
                    accelerator.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step=opt_steps)
                if args.max_steps is not None and opt_steps >= args.max_steps:
                    break
        elapsed = time.perf_counter() - t0
        # Every process ran the same number of equal-sized batches, so global work = local work x processes.
        samples = batches * args.batch_size * accelerator.num_processes
        train_loss = accelerator.reduce(loss_sum / max(1, batches), reduction="mean").item()

        eval_loss, eval_acc, n_eval = evaluate(model, eval_dl, accelerator)
        accelerator.log({"eval/loss": eval_loss, "eval/accuracy": eval_acc, "train/epoch_loss": train_loss,
                         "train/tokens_per_s": samples * args.seq_len / elapsed}, step=opt_steps)
        progress.write(
            f"epoch {epoch}: train loss {train_loss:.4f}  eval loss {eval_loss:.4f}  acc {eval_acc:.3f} "
            f"({n_eval} seqs)  |  {samples * args.seq_len / elapsed:,.0f} tokens/s  "
            f"{samples / elapsed:,.1f} samples/s  ({elapsed:.1f}s)"
        )
        if args.max_steps is not None and opt_steps >= args.max_steps:
            break

    progress.close()
    accelerator.print(f"final eval loss {eval_loss:.4f} (start {start_loss:.4f})")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
