import json

import pytest

import hetero_sched as hs


class TestModelSpec:
    def test_presets_have_published_shapes(self):
        m = hs.ModelSpec.preset("llama3-8b")
        assert (m.layers, m.hidden, m.heads, m.kv_heads, m.ffn, m.vocab) == (32, 4096, 32, 8, 14336, 128256)
        assert 8.0e9 < m.params < 8.1e9  # Llama-3-8B has 8.03 B parameters
        assert 68e9 < hs.ModelSpec.preset("llama2-70b").params < 70e9

    def test_unknown_preset_lists_known_ones(self):
        with pytest.raises(ValueError, match="llama3-8b") as err:
            hs.ModelSpec.preset("gpt5")
        assert "gpt5" in str(err.value)

    def test_from_hf_config(self, tmp_path):
        cfg = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
               "intermediate_size": 14336, "vocab_size": 128256, "hidden_act": "silu", "model_type": "llama"}
        path = tmp_path / "config.json"
        path.write_text(json.dumps(cfg))
        m = hs.ModelSpec.from_hf_config(path)
        assert m.params == hs.ModelSpec.preset("llama3-8b").params
        assert m.gated_mlp and m.kv_heads == 8

    def test_from_hf_config_missing_field(self, tmp_path):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"hidden_size": 4096}))
        with pytest.raises(ValueError, match="num_hidden_layers"):
            hs.ModelSpec.from_hf_config(path)

    @pytest.mark.parametrize("field,value", [("layers", 0), ("hidden", -1), ("heads", 3.5), ("kv_heads", 5)])
    def test_invalid_shape_names_the_value(self, field, value):
        kwargs = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 100}
        kwargs[field] = value
        with pytest.raises(ValueError, match=str(value).replace(".", r"\.")):
            hs.ModelSpec(**kwargs)


class TestCluster:
    @pytest.mark.parametrize("kwargs,bad", [({"gpus": 0}, "0"), ({"gpus": -4}, "-4"),
                                            ({"gpus": 8, "gpus_per_node": 0}, "0"), ({"gpus": 8, "gpu": "tpu"}, "tpu")])
    def test_invalid(self, kwargs, bad):
        with pytest.raises(ValueError, match=bad):
            hs.Cluster(**kwargs)

    def test_configuration_space(self):
        m = hs.ModelSpec.preset("llama3-8b")
        cl = hs.Cluster(gpus=36)  # the seed's case 3: a partial last node
        cfgs = cl.configs(m)
        assert (8, 4) in cfgs and (1, 36) in cfgs and (4, 9) in cfgs
        assert all(tp in (1, 2, 4, 8) and tp * cp <= 36 for tp, cp in cfgs)
        assert len(cfgs) == 36 + 18 + 9 + 4

    def test_tp_must_divide_heads_and_node(self):
        m = hs.ModelSpec(layers=2, hidden=96, heads=6, kv_heads=6, ffn=256, vocab=100)
        assert hs.Cluster(gpus=16).tp_degrees(m) == [1, 2]
        assert hs.Cluster(gpus=16, gpus_per_node=4).tp_degrees(hs.ModelSpec.preset("llama3-8b")) == [1, 2, 4]
