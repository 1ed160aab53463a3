"""Experiment ids do not change: the refactor left every resolved spec (and its hash) alone.

MAIN_IDS were computed with the code of main at commit 40e65b1 (before the issue-11 refactor),
by `load_study(path, fingerprint=...)` on the configs copied to tests/data/configs-main-40e65b1/
(configs/*.toml of that commit, plus tiny-regimes.toml covering every regime): with no
fingerprint, with a stand-in fingerprint ("fp-" + source), and with --epochs 1.
"""
from pathlib import Path

import pytest

from transferlab.config import load_study

CONFIGS = Path(__file__).resolve().parent / "data" / "configs-main-40e65b1"
FINGERPRINTS = {"none": None, "fp": lambda source: "fp-" + source}

MAIN_IDS = {('cifar10-quick.toml', 'epochs1'): {'baseline-cnn': '14c60d72324e6e18',
                                     'lite0-full': '80bbbd7c3d1e9fc8',
                                     'lite0-linear': 'b750a9d8bd883e4a',
                                     'lite0-scratch': '4dbfcac7613affe2',
                                     'lite1-full': '5e35ac1df0b15076',
                                     'lite1-linear': '07d854700d451edc',
                                     'lite2-full': 'b580fd781f9a3454',
                                     'lite2-linear': '2aac55d0d04a8523'},
 ('cifar10-quick.toml', 'fp'): {'baseline-cnn': '0b016a090449f502',
                                'lite0-full': 'f0d9c94a393dbc5b',
                                'lite0-linear': 'abcc4dbe50c9ec38',
                                'lite0-scratch': '59fb1b84aa8f6641',
                                'lite1-full': 'b2586b5861e16581',
                                'lite1-linear': '7f33c58317313f21',
                                'lite2-full': '3245c14fee3190e2',
                                'lite2-linear': 'c28ed5b6e3af40e2'},
 ('cifar10-quick.toml', 'none'): {'baseline-cnn': '0dd91ebd7e4b1152',
                                  'lite0-full': '443a3477364963d3',
                                  'lite0-linear': '1e1ce1b57b0d2a18',
                                  'lite0-scratch': '0c23d6a650cf924e',
                                  'lite1-full': '809701959bb2b4db',
                                  'lite1-linear': '5128687d511ca03d',
                                  'lite2-full': 'ce66ec94d28861c6',
                                  'lite2-linear': '38a6e29a10b0ff26'},
 ('cifar10-t4.toml', 'epochs1'): {'baseline-cnn': '38bb355e3898fa12',
                                  'convnext-full': 'adbd83d96fe806a6',
                                  'convnext-last1-mlp': '73f4471c6b340368',
                                  'convnext_tiny.in12k_ft_in1k-linear': '844048656e9edd0c',
                                  'effv2s-full': '037c22e9b59c5529',
                                  'effv2s-last1-mlp': '2be206cd626ce7a4',
                                  'resnet50-full': 'f00b126d2243921f',
                                  'resnet50-last1-mlp': 'd2e180232e2f8c76',
                                  'resnet50-scratch': 'b2cd188daae2fecc',
                                  'resnet50.a1_in1k-linear': '6fbe9402b4ba464b',
                                  'tf_efficientnetv2_s.in21k_ft_in1k-linear': 'f1b3f9e8638443d5',
                                  'vit_base_patch16_224.augreg2_in21k_ft_in1k-linear': '9e21158f01457ba5',
                                  'vitb16-full': 'e3516cb1e22fb09c',
                                  'vitb16-last1-mlp': '065352cfaa281862'},
 ('cifar10-t4.toml', 'fp'): {'baseline-cnn': '3d0a7c0816f0997d',
                             'convnext-full': 'aa70774bed6238a2',
                             'convnext-last1-mlp': '52a9ac5231f025b8',
                             'convnext_tiny.in12k_ft_in1k-linear': '1a51f453d3e3a664',
                             'effv2s-full': 'b4bcc9c3c3404ed0',
                             'effv2s-last1-mlp': '132454f0e36004bf',
                             'resnet50-full': 'ed1ea125d04f58c7',
                             'resnet50-last1-mlp': 'da9157cbbbff4770',
                             'resnet50-scratch': '1ff6ad1318320f25',
                             'resnet50.a1_in1k-linear': 'cf55b82346bdcbdf',
                             'tf_efficientnetv2_s.in21k_ft_in1k-linear': '160baf47f6d0dad9',
                             'vit_base_patch16_224.augreg2_in21k_ft_in1k-linear': '2a0272428671ea27',
                             'vitb16-full': '377e8605a28be67a',
                             'vitb16-last1-mlp': '5fa01d3ba5037de1'},
 ('cifar10-t4.toml', 'none'): {'baseline-cnn': 'd4eefcd94db5f3ea',
                               'convnext-full': '8dc705094cf767d1',
                               'convnext-last1-mlp': 'b91db9ce99236e8c',
                               'convnext_tiny.in12k_ft_in1k-linear': 'af4f1e759d968ca0',
                               'effv2s-full': '21f8a5da8655924b',
                               'effv2s-last1-mlp': 'ef0db930f364e7c2',
                               'resnet50-full': '1b498700d2331730',
                               'resnet50-last1-mlp': '6e898083573e0289',
                               'resnet50-scratch': 'b4e50f483b9b52d2',
                               'resnet50.a1_in1k-linear': '7659797860d886cc',
                               'tf_efficientnetv2_s.in21k_ft_in1k-linear': 'f9bd60a2c1a022bb',
                               'vit_base_patch16_224.augreg2_in21k_ft_in1k-linear': '0b2d68d881f43a2f',
                               'vitb16-full': '29d10586ac5880f7',
                               'vitb16-last1-mlp': '27ccdee816991c1e'},
 ('cifar10.toml', 'epochs1'): {'baseline-cnn': '38bb355e3898fa12',
                               'convnext-full': '319c2453d03bf074',
                               'convnext-last1-mlp': 'f3ac9a11d70ecbdf',
                               'convnext_tiny.in12k_ft_in1k-linear': '81c7248e28a9540b',
                               'effv2s-full': '949b51b5bbceb6ef',
                               'effv2s-last1-mlp': 'b36568c7ff8725f7',
                               'resnet50-full': '61adf54ebaa86a4f',
                               'resnet50-last1-mlp': '9ddf00139b5485d7',
                               'resnet50-scratch': '69d2d89a95b51088',
                               'resnet50.a1_in1k-linear': 'f7aff605daffb824',
                               'tf_efficientnetv2_s.in21k_ft_in1k-linear': 'ce24d93ac1d46e66',
                               'vit_base_patch16_224.augreg2_in21k_ft_in1k-linear': '49938fa88ec6b0dd',
                               'vitb16-full': '662609e97fc3fecb',
                               'vitb16-last1-mlp': '70627c5aa6c48cfe'},
 ('cifar10.toml', 'fp'): {'baseline-cnn': 'd8b42353e1052759',
                          'convnext-full': 'a264c7a1e0570cb0',
                          'convnext-last1-mlp': '02f99bf87e196a6d',
                          'convnext_tiny.in12k_ft_in1k-linear': '4e057794c6af8eb5',
                          'effv2s-full': '3971e992f534f209',
                          'effv2s-last1-mlp': '3469e185c8130eb6',
                          'resnet50-full': '9b8a76c7d40e96f0',
                          'resnet50-last1-mlp': '3f858b2676da2b2d',
                          'resnet50-scratch': '5b013ee44a0689c9',
                          'resnet50.a1_in1k-linear': '350af3e6252599f0',
                          'tf_efficientnetv2_s.in21k_ft_in1k-linear': '3c3e0f1d481ae869',
                          'vit_base_patch16_224.augreg2_in21k_ft_in1k-linear': '0fda65886a7fb84c',
                          'vitb16-full': '3e26da94c60fadf4',
                          'vitb16-last1-mlp': '74f29e5fed297978'},
 ('cifar10.toml', 'none'): {'baseline-cnn': '075f9efad289bd1e',
                            'convnext-full': 'd15e310c67a3208c',
                            'convnext-last1-mlp': 'c9bbfa723c27aded',
                            'convnext_tiny.in12k_ft_in1k-linear': 'c22cf3642a53f98e',
                            'effv2s-full': 'ca6a635007d223ee',
                            'effv2s-last1-mlp': '5626fb5a8cea5647',
                            'resnet50-full': 'dbf1df8e401f2879',
                            'resnet50-last1-mlp': '5f2e2cf85b503bf6',
                            'resnet50-scratch': 'f8b7f82bfc882d89',
                            'resnet50.a1_in1k-linear': '99040b83702d8a3b',
                            'tf_efficientnetv2_s.in21k_ft_in1k-linear': 'f3db675feed83cb9',
                            'vit_base_patch16_224.augreg2_in21k_ft_in1k-linear': '6d4a8277a52503d7',
                            'vitb16-full': '85292a2be444f3af',
                            'vitb16-last1-mlp': '23cbbe7c00c9ed90'},
 ('tiny-regimes.toml', 'epochs1'): {'base': '751e19cbec0af72a',
                                    'lite0-full': '14dd2bd6455e884b',
                                    'lite0-gradual': '71dcac3af74754fa',
                                    'lite0-last1': '3c4ff870eed2047b',
                                    'lite0-linear': '759f1aa585ac013e',
                                    'lite0-linear-bp': '1376dcb72df4f378',
                                    'lite0-linear-mlp': 'ed9ff53bda313ad4',
                                    'lite0-scratch': '24d5018835700c50'},
 ('tiny-regimes.toml', 'fp'): {'base': '174f9711366e8f98',
                               'lite0-full': 'cab3d04f520b6b6f',
                               'lite0-gradual': '75cee566572137e9',
                               'lite0-last1': '241ab7bafea29a74',
                               'lite0-linear': 'b6cbce0fdadb496c',
                               'lite0-linear-bp': '8a1811188d357a6a',
                               'lite0-linear-mlp': '62742f8df3e86a04',
                               'lite0-scratch': '2b2ee55ecb22af98'},
 ('tiny-regimes.toml', 'none'): {'base': 'cb4d812bdb3fc942',
                                 'lite0-full': 'acbc5c0d315f5ec0',
                                 'lite0-gradual': 'c55560a76a646fef',
                                 'lite0-last1': 'a50081e2b8a801f0',
                                 'lite0-linear': 'db750928fb77a71e',
                                 'lite0-linear-bp': '5357ace4db7eb9ec',
                                 'lite0-linear-mlp': 'b24291c18a2a91ef',
                                 'lite0-scratch': '78b345a18e6adc64'}}

# main rewrote gradual to full under --epochs 1 (a silent change of regime); it now stays
# gradual, cut to its all-layer phase, so that one id differs by design
CHANGED_BY_DESIGN = {("tiny-regimes.toml", "epochs1", "lite0-gradual")}


@pytest.mark.parametrize("config, how", sorted(MAIN_IDS), ids=lambda v: str(v))
def test_ids_are_the_ids_main_computed(config, how):
    if how == "epochs1":
        study = load_study(CONFIGS / config, fingerprint=None, epochs=1)
    else:
        study = load_study(CONFIGS / config, fingerprint=FINGERPRINTS[how])
    now = {e.name: e.id for e in study.experiments}
    want = MAIN_IDS[config, how]
    assert set(now) == set(want)
    for name, exp_id in want.items():
        if (config, how, name) in CHANGED_BY_DESIGN:
            assert now[name] != exp_id
        else:
            assert now[name] == exp_id, f"{config} ({how}): {name} changed id"


def test_gradual_under_one_epoch_stays_gradual_and_says_so():
    from transferlab import regimes
    study = load_study(CONFIGS / "tiny-regimes.toml", fingerprint=None, epochs=1)
    spec = next(e for e in study.experiments if e.name == "lite0-gradual")
    assert spec.regime == "gradual" and spec.gradual_head_epochs == 0
    assert "cut to its second phase" in regimes.description(spec, [])
