"""Serving workloads as requests any OpenAI-compatible server can take, and a replayer over HTTP.

A request is what a client sends: chat messages (or a raw prompt), max_tokens, temperature, top_p,
seed, plus when it arrives and which of the server's N adapters it asks for. The same list goes to
every system a benchmark compares: loraops' engine in-process (bench/serve.py), PEFT, or any server
over HTTP (`replay_http`: loraops serve, llama.cpp, vLLM).

realistic (the default of bench/serve.py): the product's traffic. Per request, one of
  - a tenant task (40% invoices, 20% tickets): held-out examples from the demo's own generators
    (`demo.tasks.generate`, the call the demo's final queries make, so changes to the demo's data
    show up here), the user turn only, greedy (extraction), max_tokens = the reference answer's
    token count + 16;
  - a chat request (40%): a varied set of questions, rewrites, lists, code, multi-turn exchanges
    and summaries of documentation paragraphs (`pydoc_data`, shipped with Python), max_tokens by
    kind (48-192), three in four sampled (temperature 0.7, top_p 0.95, a seed per request), the
    rest greedy.
  Sent as chat messages, so the server applies the chat template; EOS ends a request (its own
  answer length, up to max_tokens). Poisson arrivals; adapters by a Zipf law (s = 1.1), drawn from
  their own generator so every N gets the same requests.
repetitive (the trace of the first benchmarks, `--trace repetitive`): raw prompts that are all
  prefixes of one fixed sentence, greedy, EOS ignored, 8-128 new tokens uniformly. The base then
  loops, which flatters n-gram speculation (~90% of drafts accepted, against ~31-36% on extraction).
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    arrival_s: float
    adapter: int                       # index into the N adapters the system serves
    kind: str                          # "invoices" | "tickets" | "chat" | "repetitive"
    max_tokens: int
    messages: tuple[dict, ...] = ()    # chat requests
    prompt: str | None = None          # raw-prompt requests (the repetitive trace)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False           # only the repetitive trace (engines in-process honour it)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def body(self, model: str) -> dict:
        """The OpenAI request body (streamed, with usage in the last chunk)."""
        body = {"model": model, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "stream": True, "stream_options": {"include_usage": True}}
        if self.seed is not None:
            body["seed"] = self.seed
        if self.prompt is not None:
            return {**body, "prompt": self.prompt}
        return {**body, "messages": list(self.messages)}


def encode(tokenizer, request: Request) -> list[int]:
    """Token ids as `loraops serve` encodes the request (serve/api.py): the chat template with the
    generation prompt, no special tokens added on top; a raw prompt with them."""
    if request.prompt is not None:
        return tokenizer(request.prompt)["input_ids"]
    text = tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- the realistic trace ------------------------------------------------------------------------

CHAT = [  # (max_tokens, messages); the kinds a general assistant gets, short to long
    (48, ["What is the capital of Australia?"]),
    (48, ["How many days are there in a leap year?"]),
    (64, ["Give me a one-sentence definition of inflation."]),
    (96, ["Rewrite this more politely: send me the report now, it is late again."]),
    (96, ["Turn this into a bullet list: milk, eggs, two kinds of bread, coffee and something for dinner."]),
    (128, ["List five things to check before a long car trip."]),
    (128, ["Explain the difference between a process and a thread to a new programmer."]),
    (160, ["Write a short, friendly e-mail telling a customer their order ships on Monday."]),
    (192, ["Write a Python function that returns the n-th Fibonacci number, with a docstring."]),
    (192, ["What are the pros and cons of working from home? Answer in two short paragraphs."]),
    (96, ["I want to learn to cook.", "Great idea! What kind of food do you like?",
          "Mostly Italian. Where do I start?"]),
    (96, ["My laptop is slow.", "Is it slow all the time, or only with some programs?",
          "Mostly when the browser has many tabs open."]),
    (64, ["Translate to French: the meeting is moved to Thursday afternoon."]),
    (128, ["Suggest three names for a bakery that sells only sourdough bread, and say why."]),
]
SUMMARY_TOPICS = ("assignment", "if", "while", "for", "try", "with", "function", "class", "import",
                  "lambda", "exceptions", "numbers", "strings", "sequences", "typesmapping")


def _chat_messages(rng: random.Random) -> tuple[int, list[dict]]:
    if rng.random() < 0.25:                                   # summarise a real paragraph
        from pydoc_data.topics import topics

        text = topics[rng.choice([t for t in SUMMARY_TOPICS if t in topics])]   # topics differ by Python version
        paragraphs = [p for p in text.split("\n\n") if 200 < len(p) < 1500]
        return 128, [{"role": "user", "content": "Summarise in two sentences:\n\n" + rng.choice(paragraphs)}]
    budget, turns = rng.choice(CHAT)
    roles = ["user", "assistant"] * len(turns)
    return budget, [{"role": role, "content": text} for role, text in zip(roles, turns)]


def tenant_examples(task: str, n: int) -> list[dict]:
    """n held-out chat records of a demo tenant's task (the generator call of the demo's queries)."""
    from loraops.demo import tasks

    return tasks.generate(task, n, seed=2026, duplicate_rate=0)


def realistic(n_requests: int, n_adapters: int, rate: float, tokenizer, seed: int = 0) -> list[Request]:
    rng, g_adapter = random.Random(seed), random.Random(seed + 1)
    weights = [1.0 / (k + 1) ** 1.1 for k in range(n_adapters)]
    pools = {task: iter(tenant_examples(task, n_requests)) for task in ("invoices", "tickets")}
    t, out = 0.0, []
    for i in range(n_requests):
        t += rng.expovariate(rate)
        adapter = g_adapter.choices(range(n_adapters), weights)[0]
        roll = rng.random()
        if roll < 0.6:
            record = next(pools["invoices" if roll < 0.4 else "tickets"])
            answer = len(tokenizer(record["messages"][-1]["content"], add_special_tokens=False)["input_ids"])
            out.append(Request(t, adapter, "invoices" if roll < 0.4 else "tickets", answer + 16,
                               messages=tuple(record["messages"][:-1])))
        else:
            budget, messages = _chat_messages(rng)
            sampled = rng.random() < 0.75
            out.append(Request(t, adapter, "chat", budget, messages=tuple(messages),
                               temperature=0.7 if sampled else 0.0, top_p=0.95 if sampled else 1.0,
                               seed=i if sampled else None))
    return out


# ---- the repetitive trace (the first benchmarks') -------------------------------------------------

PROMPTS = ["Classify this support ticket and route it: ", "Extract vendor, total and currency from: ",
           "Summarise the following customer message in one line: ", "Translate to formal English: "]
FILLER = ("invoice INV-2024-0042 from Acme GmbH totals 1,234.50 EUR, due 2024-03-01; the customer says the "
          "amount is wrong and asks for a corrected copy before the end of the month ")


def repetitive(n_requests: int, n_adapters: int, rate: float, seed: int = 0, min_new: int = 8,
               max_new: int = 128) -> list[Request]:
    import torch

    g, g_adapter = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    weights = torch.tensor([1.0 / (k + 1) ** 1.1 for k in range(n_adapters)])
    t, out = 0.0, []
    for i in range(n_requests):
        t += float(torch.empty(1).exponential_(rate, generator=g))
        adapter = int(torch.multinomial(weights, 1, generator=g_adapter))
        words = int(torch.randint(10, 40, (1,), generator=g))
        new = int(torch.randint(min_new, max_new + 1, (1,), generator=g))
        out.append(Request(t, adapter, "repetitive", new, prompt=PROMPTS[i % len(PROMPTS)] +
                           " ".join(FILLER.split()[:words]), ignore_eos=True))
    return out


def make(name: str, n_requests: int, n_adapters: int, rate: float, tokenizer, seed: int = 0) -> list[Request]:
    if name == "realistic":
        return realistic(n_requests, n_adapters, rate, tokenizer, seed)
    if name == "repetitive":
        return repetitive(n_requests, n_adapters, rate, seed)
    raise ValueError(f"unknown trace {name!r}: realistic or repetitive")


def describe(trace: list[Request]) -> str:
    kinds = {k: sum(r.kind == k for r in trace) for k in dict.fromkeys(r.kind for r in trace)}
    sampled = sum(not r.greedy for r in trace)
    return (", ".join(f"{v} {k}" for k, v in kinds.items()) + f"; {sampled} sampled, {len(trace) - sampled} "
            f"greedy; max_tokens {min(r.max_tokens for r in trace)}-{max(r.max_tokens for r in trace)}")


# ---- results --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one request got: seconds from its arrival, tokens generated (EOS included, as `usage`
    counts), and the text."""

    ttft: float = 0.0
    latency: float = 0.0
    tokens: int = 0
    text: str = ""
    error: str | None = None


def summarise(name: str, outcomes: list[Outcome], wall: float) -> dict:
    ok = [o for o in outcomes if o.error is None]
    ttft, lat = sorted(o.ttft for o in ok), sorted(o.latency for o in ok)
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    tokens = sum(o.tokens for o in ok)
    return {"name": name, "tok_s": tokens / wall, "req_s": len(ok) / wall, "tokens": tokens,
            "errors": len(outcomes) - len(ok), "ttft50": statistics.median(ttft) if ttft else float("nan"),
            "ttft99": q(ttft, 0.99), "lat50": statistics.median(lat) if lat else float("nan"),
            "lat99": q(lat, 0.99)}


def replay_http(base_url: str, trace: list[Request], models: list[str], api_key: str = "none",
                timeout: float = 600) -> tuple[list[Outcome], float]:
    """Send every request of `trace` at its arrival time (one thread each) to an OpenAI-compatible
    server at `base_url` (".../v1"), request i asking for models[trace[i].adapter]; streamed, so
    TTFT is the first content chunk. -> (outcomes in trace order, wall seconds). Tokens are the
    server's `usage.completion_tokens`, or the number of content chunks where it sends no usage."""
    import httpx

    client = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=len(trace) + 4),
                          headers={"Authorization": f"Bearer {api_key}"})
    outcomes = [Outcome() for _ in trace]
    t0 = time.perf_counter()

    def send(i: int, r: Request) -> None:
        time.sleep(max(0.0, t0 + r.arrival_s - time.perf_counter()))
        start, out, chunks = time.perf_counter(), outcomes[i], 0
        path = "/completions" if r.prompt is not None else "/chat/completions"
        try:
            with client.stream("POST", base_url + path, json=r.body(models[r.adapter])) as resp:
                if resp.status_code != 200:
                    out.error = f"HTTP {resp.status_code}: {resp.read()[:200]!r}"
                    return
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices") or []:
                        piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            out.ttft = out.ttft or time.perf_counter() - start
                            out.text += piece
                            chunks += 1
                    if chunk.get("usage"):
                        out.tokens = chunk["usage"]["completion_tokens"]
        except httpx.HTTPError as e:
            out.error = f"{type(e).__name__}: {e}"
            return
        out.latency = time.perf_counter() - start
        out.tokens = out.tokens or chunks
    threads = [threading.Thread(target=send, args=(i, r), daemon=True) for i, r in enumerate(trace)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    client.close()
    return outcomes, wall
