"""The EleutherAI lm-eval adapter over our megatron model, checked against transformers, on a local task."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.workers.interop_common import make_hf_model

lm_eval = pytest.importorskip("lm_eval", reason="needs the eval extra (pip install -e '.[eval]')")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, our MegatronLM over its import, tokenizer)."""
    from nemo_minitron import runtime
    from nemo_minitron.data.tokenizer import load_tokenizer
    from nemo_minitron.eval.lm_eval_adapter import MegatronLM
    from nemo_minitron.eval.perplexity import load_model
    from nemo_minitron.interop.hf import import_hf

    runtime.init_model_parallel(1, 1, seed=1234)
    tmp = tmp_path_factory.mktemp("lm_eval")
    hf = make_hf_model("llama", tmp / "hf")
    model, _, _ = load_model(import_hf(tmp / "hf", tmp / "ckpt"))
    tok = load_tokenizer(tmp / "hf")
    return hf, MegatronLM(model, tok, max_length=64, batch_size=2, max_new_tokens=6), tok, tmp


def hf_loglikelihood(hf, ids: list[int], n_target: int) -> tuple[float, bool]:
    with torch.no_grad():
        logp = F.log_softmax(hf(torch.tensor([ids])).logits.float()[0], dim=-1)
    tgt = torch.tensor(ids[-n_target:])
    lp = logp[len(ids) - n_target - 1:len(ids) - 1]
    return float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all())


def _req(kind, *args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_and_rolling_match_transformers(pair):
    hf, lm, tok, _ = pair
    pairs = [("w5 w17 w99", " w3 w64"), ("w8", " w9"), ("w10 w11 w12 w13 ", "w14")]
    got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        ids = [lm.prefix_id, *tok.encode(ctx + cont)]
        ref, ref_greedy = hf_loglikelihood(hf, ids, len(tok.encode(cont)))
        assert ll == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy
    text = " ".join(f"w{i}" for i in range(20, 50))
    (rolled,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    ids = [lm.prefix_id, *tok.encode(text)]
    assert rolled == pytest.approx(hf_loglikelihood(hf, ids, len(ids) - 1)[0], abs=1e-3)
    lm.max_length = 8  # disjoint windows with truncated context: a different (finite) number
    try:
        (short,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    finally:
        lm.max_length = 64
    assert short == short and abs(short - rolled) > 1e-3


def test_generate_until_is_greedy(pair):
    hf, lm, tok, _ = pair
    ctx = "w5 w17 w99 w3"
    ids = [lm.prefix_id, *tok.encode(ctx)]
    new = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(hf(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eod_id:
                break
            new.append(nxt)
    (out,) = lm.generate_until([_req("generate_until", ctx, {"until": ["never"], "max_gen_toks": 6})])
    assert out == tok.decode(new)
    stop = tok.decode(new[2:3])
    (cut,) = lm.generate_until([_req("generate_until", ctx, {"until": [stop], "max_gen_toks": 6})])
    assert stop not in cut and out.startswith(cut)


def test_simple_evaluate_on_a_local_task(pair):
    from nemo_minitron.eval.lm_eval_adapter import run_tasks

    hf, lm, tok, tmp = pair
    docs = [{"query": f"w{3 + i} w{40 + i} w{80 + i}", "choices": [f"w{10 + i}", f"w{60 + i}", f"w{100 + i}"],
             "gold": i % 3} for i in range(8)]
    data = tmp / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(
        "task: tiny_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: query\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n")
    expected = 0
    for d in docs:
        scores = [hf_loglikelihood(hf, [lm.prefix_id, *tok.encode(d["query"] + " " + c)], len(tok.encode(" " + c)))[0]
                  for c in d["choices"]]
        expected += int(max(range(3), key=scores.__getitem__) == d["gold"])
    results = run_tasks(lm.model, tok, 64, ["tiny_choice"], include_path=str(tasks))
    assert results["tiny_choice"]["acc,none"] == pytest.approx(expected / len(docs))
