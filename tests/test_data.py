"The data pipeline through the CLI: `qlora-nb preprocess` accounting, JSON output, reuse, preview and bad input."
import json
from pathlib import Path
import pytest
from qlora_nb.cli import run

KEYS = {'rows_in', 'kept', 'truncated', 'split', 'dropped', 'total_tokens', 'trained_tokens', 'packing_efficiency', 'per_dataset'}


def _config(tmp_path, data:str) -> Path:
    p = tmp_path/'run.yaml'
    p.write_text(f"model:\n  base_model: builtin:tiny-llama\ndata:\n{data}\n  prepared_path: {tmp_path/'prepared'}\n", encoding='utf-8')
    return p


def test_preprocess_json_and_reuse(tmp_path):
    (tmp_path/'a.jsonl').write_text('{"instruction": "Say hi.", "input": "", "output": "Hi!"}\n{"instruction": "x", "input": "", "output": ""}\n')
    cfg = _config(tmp_path, f"  datasets:\n  - path: builtin:demo-chat\n  - path: {tmp_path/'a.jsonl'}\n  sequence_len: 128\n  sample_packing: true")
    code, out, err = run('preprocess', str(cfg), '--json')
    assert code == 0, err
    d = json.loads(out)
    assert KEYS <= set(d)
    assert (d['rows_in'], d['kept'], d['dropped']['empty_response']) == (96, 95, 1)
    assert d['rows_in'] == d['kept'] + sum(d['dropped'].values())
    for p in d['per_dataset']: assert p['rows_in'] == p['kept'] + sum(p['dropped'].values())
    assert 0 < d['packing_efficiency'] <= 1 and d['trained_tokens'] < d['total_tokens']
    assert d['reused'] is False
    code, out2, _ = run('preprocess', str(cfg), '--json')
    assert json.loads(out2)['reused'] is True
    assert {k: v for k, v in json.loads(out2).items() if k != 'reused'} == {k: v for k, v in d.items() if k != 'reused'}


def test_preprocess_table_and_preview(tmp_path):
    cfg = _config(tmp_path, "  datasets:\n  - path: builtin:demo-chat\n    limit: 10")
    code, out, err = run('preprocess', str(cfg), '--preview', '2')
    assert code == 0, err
    assert 'rows in' in out and 'data.datasets[0]' in out and "chat template: llama3; pad token: '<|end_of_text|>'" in out
    assert '[[' in out and '<|eot_id|>]]' in out  # not a terminal: trained text in brackets
    assert "qlora-nb: the tokenizer has no pad token: padding with '<|end_of_text|>'" in err  # the library's log is shown
    code, out, _ = run('preprocess', str(cfg), '--json')
    assert json.loads(out)['packing_efficiency'] is None  # no packing


@pytest.mark.parametrize('content,msg', [
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{"messages": [}\n', 'bad.jsonl:2: invalid JSON'),
    (b'{"messages": [{"role": "robot", "content": "a"}]}\n', "bad.jsonl row 1: `messages[0].role` is 'robot'"),
])
def test_preprocess_bad_input(tmp_path, content, msg):
    (tmp_path/'bad.jsonl').write_bytes(content)
    cfg = _config(tmp_path, f"  datasets:\n  - path: {tmp_path/'bad.jsonl'}")
    code, out, err = run('preprocess', str(cfg))
    assert code == 1 and msg in err, err
    assert 'on_bad_rows: skip' in err


def test_template_mismatch(tmp_path):
    cfg = _config(tmp_path, "  chat_template: chatml\n  datasets:\n  - path: builtin:demo-chat\n    conversation: llama3")
    code, out, err = run('preprocess', str(cfg))
    assert code == 1 and "data.datasets[0].conversation is 'llama3'" in err, err
