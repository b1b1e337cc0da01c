"""The zoo: tiny models built as users build them, each seeded with a private ``torch.Generator``.

Every builder returns a :class:`Case`: the model exactly as a user hands it to ``lw.Landscape`` (left in train mode,
as after training), the Landscape arguments (``loss_fn``/``batch_loss``/``params``/``data``), a start point for
``interpolate`` and what the independent reference (tests/zoo/reference.py) evaluates.  The classes live at module
level so that Dask workers can unpickle them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import landscape_widgets as lw


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randomize(module, seed, scale=0.5, norm_scale=None):
    """Every (deduplicated) floating parameter ~ N(0, scale^2) from a private generator; LayerNorm weights (where
    ``norm_scale`` is given) ~ 1 + N(0, norm_scale^2)."""
    g = gen(seed)
    norms = {id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None}
    with torch.no_grad():
        for _n, p in module.named_parameters():
            if not p.is_floating_point():
                continue
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if norm_scale is not None and id(p) in norms:
                p.copy_(1.0 + norm_scale * noise)
            else:
                p.copy_(scale * noise)
    return module


def perturbed(model, seed, scale=0.3):
    """A start point for interpolate: a deep copy with every parameter (moved or not) and the BatchNorm statistics
    moved away from the model's."""
    start = copy.deepcopy(model)
    g = gen(seed)
    with torch.no_grad():
        for _n, p in start.named_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in start.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.add_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(1.0 + 0.5 * torch.rand(m.running_var.shape, generator=g))
    return start


@dataclass
class Case:
    name: str
    model: nn.Module                 # what the user passes (left in train mode)
    data: object
    loss_fn: object = None
    batch_loss: object = None
    params: object = None            # Landscape(params=...); None: the default rule
    ref_model: nn.Module = None      # what the reference evaluates: the model, or a compiled model's _orig_mod
    start: nn.Module = None          # interpolate's start (a module of the same architecture)
    hessian: bool = False            # a dense Hessian over the moved parameters is cheap and double backward exists
    hessian_params: object = None    # a smaller params rule for the Hessian tests (big models)
    conv: bool = False
    shortcut: bool = False           # a moved Linear/Conv with fan_in >= 18 is called with the data tensor itself
    notes: str = ""
    extra: dict = field(default_factory=dict)
    tol: dict = None                 # assert_close's rtol/atol for values (None: float32's); low-precision cases
    hessian_rtol: float = 1e-3       # eigenvalues and kappas, relative to max |lambda| of the float64 dense Hessian

    def __post_init__(self):
        if self.ref_model is None:
            self.ref_model = self.model

    def landscape_kwargs(self, params="__case__"):
        kw = {"device": "cpu"}
        if self.batch_loss is not None:
            kw["batch_loss"] = self.batch_loss
        p = self.params if params == "__case__" else params
        if p is not None:
            kw["params"] = p
        return kw

    def landscape(self, params="__case__", **extra):
        return lw.Landscape(self.model, self.loss_fn, self.data, **self.landscape_kwargs(params), **extra)


# -- 1. GPT-2 ---------------------------------------------------------------------------------------------------
def gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):  # HF's init draws from the global RNG: leave it as it was
        model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight, "lm_head must be tied to wte"
    randomize(model, seed, scale=0.3, norm_scale=0.1)
    model.train()
    g = gen(seed + 100)
    ids = torch.randint(0, 50, (4, 8), generator=g)
    data = {"input_ids": ids, "labels": ids.clone()}
    return Case("gpt2", model, data, start=perturbed(model, seed + 200, 0.1),
                hessian_params=gpt2_hessian_params, notes="SDPA attention, tied lm_head/wte, loss in the output")


GPT2_HESSIAN_NAMES = ("transformer.h.0.attn.c_attn.bias", "transformer.h.1.attn.c_attn.bias",
                      "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight")


def gpt2_hessian_params(name, tensor):
    """Both blocks' q/k/v biases (through attention's softmax), an MLP bias and the final norm: 128 numbers, so that
    a dense Hessian is cheap (the tied embedding's curvature is checked along directions, on the full model)."""
    return name in GPT2_HESSIAN_NAMES


# -- 2. BERT ----------------------------------------------------------------------------------------------------
def bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, type_vocab_size=2, num_labels=3)
    with torch.random.fork_rng(devices=[]):
        model = BertForSequenceClassification(cfg)
    randomize(model, seed, scale=0.3, norm_scale=0.1)
    model.train()
    g = gen(seed + 100)
    batches = []
    for n in (3, 2):  # two dict batches of unequal sizes, with padding masks
        ids = torch.randint(0, 50, (n, 7), generator=g)
        mask = torch.ones(n, 7, dtype=torch.long)
        mask[0, 5:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)})
    return Case("bert", model, batches, start=perturbed(model, seed + 200, 0.1), hessian_params=bert_hessian_params,
                notes="SDPA attention with padding masks, labels in the dict, list of 2 unequal dict batches")


def bert_hessian_params(name, tensor):
    """The classifier, the query/key biases (attention's softmax, under the padding mask) and the last LayerNorm: 115
    numbers."""
    return name.startswith("classifier.") or name.endswith(("attention.self.query.bias", "attention.self.key.bias",
                                                            "output.LayerNorm.weight"))


# -- 3. tied autoencoder ----------------------------------------------------------------------------------------
class TiedAutoencoder(nn.Module):
    """Decoder = the encoder's weight transposed (F.linear(h, enc.weight.t())); the encoder takes the data."""

    def __init__(self, d=64, h=4):
        super().__init__()
        self.enc = nn.Linear(d, h)
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return F.linear(h, self.enc.weight.t(), self.dec_bias)


def tied_autoencoder(seed=0):
    model = randomize(TiedAutoencoder(), seed, scale=0.3).train()
    x = torch.randn(32, 64, generator=gen(seed + 100))
    return Case("tied_autoencoder", model, (x, x), loss_fn=nn.MSELoss(), start=perturbed(model, seed + 200),
                hessian=True, shortcut=True)


# -- 4. shared Linear -------------------------------------------------------------------------------------------
class SharedLinear(nn.Module):
    """``b.weight = a.weight``: one Parameter in two modules.  ``a`` (fan_in 64) takes the data tensor itself, so the
    input-affine shortcut stands in for it; ``b`` takes another tensor and must see the moved weight too."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 4)
        self.b = nn.Linear(64, 4)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.a(x)) + torch.tanh(self.b(x.flip(1))))


def shared_linear(seed=0):
    model = randomize(SharedLinear(), seed, scale=0.3).train()
    assert model.a.weight is model.b.weight
    g = gen(seed + 100)
    x, y = torch.randn(40, 64, generator=g), torch.randint(0, 3, (40,), generator=g)
    return Case("shared_linear", model, (x, y), loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True, shortcut=True)


class ReusedLinear(nn.Module):
    """One Linear called twice: first with the data tensor (the shortcut's case), then with a hidden tensor."""

    def __init__(self, d=24):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.a(torch.tanh(self.a(x)))))


def reused_linear(seed=0):
    model = randomize(ReusedLinear(), seed, scale=0.3).train()
    g = gen(seed + 100)
    x, y = torch.randn(40, 24, generator=g), torch.randint(0, 3, (40,), generator=g)
    return Case("reused_linear", model, (x, y), loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True, shortcut=True)


# -- 5. LSTM and GRU --------------------------------------------------------------------------------------------
class RNNClassifier(nn.Module):
    def __init__(self, cell="lstm"):
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(3, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _rnn(cell, seed=0):
    model = randomize(RNNClassifier(cell), seed, scale=0.5).train()
    g = gen(seed + 100)
    x, y = torch.randn(20, 5, 3, generator=g), torch.randint(0, 3, (20,), generator=g)
    return Case(cell, model, (x, y), loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True)


def lstm(seed=0):
    return _rnn("lstm", seed)


def gru(seed=0):
    return _rnn("gru", seed)


# -- 6. parametrizations ----------------------------------------------------------------------------------------
class NormedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        P = nn.utils.parametrizations
        self.fc1 = P.weight_norm(nn.Linear(6, 8))
        self.fc2 = P.spectral_norm(nn.Linear(8, 3))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def parametrized(seed=0):
    with torch.random.fork_rng(devices=[]):  # spectral_norm draws its u, v from the global RNG
        torch.manual_seed(seed)
        model = NormedMLP()
    randomize(model, seed, scale=0.5)
    g = gen(seed + 100)
    x, y = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    model.train()
    with torch.no_grad():  # a few training-mode forwards: spectral_norm's power iteration updates its u, v buffers
        for _ in range(3):
            model(x)
    return Case("parametrized", model, (x, y), loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True, notes="weight_norm + spectral_norm (power-iteration buffers; eval mode uses them)")


# -- 7. frozen backbone -----------------------------------------------------------------------------------------
class AdapterNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16))
        self.lora_A = nn.Linear(16, 2, bias=False)
        self.lora_B = nn.Linear(2, 16, bias=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.backbone(x)
        return self.head(torch.tanh(h + self.lora_B(self.lora_A(h))))


def lora_names(name, tensor):
    return "lora_" in name


def _frozen(name, params, seed=0):
    model = randomize(AdapterNet(), seed, scale=0.5).train()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("head."))  # backbone and adapters frozen, head trainable
    g = gen(seed + 100)
    x, y = torch.randn(30, 10, generator=g), torch.randint(0, 3, (30,), generator=g)
    return Case(name, model, (x, y), loss_fn=nn.CrossEntropyLoss(), params=params,
                start=perturbed(model, seed + 200), hessian=True)


def frozen_default(seed=0):
    return _frozen("frozen_default", None, seed)


def frozen_all(seed=0):
    return _frozen("frozen_all", "all", seed)


def frozen_lora(seed=0):
    return _frozen("frozen_lora", lora_names, seed)


def frozen_names(seed=0):
    return _frozen("frozen_names", ["lora_A.weight", "head.bias"], seed)


# -- 8. torch.compile -------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, d_in=6, hidden=8, d_out=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def compiled(seed=0):
    inner = randomize(MLP(), seed).train()
    model = torch.compile(inner)  # never called here: compiling is slow, the library should not need it
    g = gen(seed + 100)
    x, y = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    return Case("compiled", model, (x, y), loss_fn=nn.CrossEntropyLoss(), ref_model=inner,
                start=perturbed(inner, seed + 200), hessian=True)


# -- 9. BatchNorm -----------------------------------------------------------------------------------------------
class BNConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)  # two input channels: channels-last is visible in the input's strides
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def batchnorm(seed=0):
    model = randomize(BNConvNet(), seed, scale=0.5)
    g = gen(seed + 100)
    with torch.no_grad():
        model.bn.running_mean.copy_(0.3 * torch.randn(4, generator=g))
        model.bn.running_var.copy_(0.5 + torch.rand(4, generator=g))
    model.train()
    x, y = torch.randn(24, 2, 6, 6, generator=g), torch.randint(0, 3, (24,), generator=g)
    return Case("batchnorm", model, (x, y), loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True, conv=True)


# -- 10. L2-regularized batch_loss ------------------------------------------------------------------------------
L2_LAMBDA = 0.05


def l2_batch_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y) + L2_LAMBDA * sum(p.pow(2).sum() for p in model.parameters())


def l2_regularized(seed=0):
    model = randomize(MLP(), seed).train()
    g = gen(seed + 100)
    x, y = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    return Case("l2_regularized", model, (x, y), batch_loss=l2_batch_loss, start=perturbed(model, seed + 200),
                hessian=True)


# -- 11. dict batches, (x, y, w) triples, unequal batches -------------------------------------------------------
def dict_batch_loss(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def dict_batch(seed=0):
    model = randomize(MLP(), seed).train()
    g = gen(seed + 100)
    data = {"x": torch.randn(30, 6, generator=g), "y": torch.randint(0, 3, (30,), generator=g)}
    return Case("dict_batch", model, data, batch_loss=dict_batch_loss, start=perturbed(model, seed + 200),
                hessian=True)


def weighted_batch_loss(model, batch):
    x, y, w = batch
    per_sample = F.cross_entropy(model(x), y, reduction="none")
    return (w * per_sample).sum() / w.sum()


def weighted_triples(seed=0):
    model = randomize(MLP(), seed).train()
    g = gen(seed + 100)
    data = [(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g), torch.rand(n, generator=g) + 0.1)
            for n in (7, 5, 3)]
    return Case("weighted_triples", model, data, batch_loss=weighted_batch_loss, start=perturbed(model, seed + 200),
                hessian=True)


def unequal_batches(seed=0):
    model = randomize(MLP(), seed).train()
    g = gen(seed + 100)
    data = [(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (7, 5, 3)]
    return Case("unequal_batches", model, data, loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True)


def unequal_loader(seed=0):
    model = randomize(MLP(), seed).train()
    g = gen(seed + 100)
    ds = torch.utils.data.TensorDataset(torch.randn(15, 6, generator=g), torch.randint(0, 3, (15,), generator=g))
    # 6, 6, 3; a DataLoader draws its base seed from its generator at every iter() (from the global RNG without one:
    # test_dataloader_without_generator_leaves_the_global_rng_untouched checks that case on its own)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=False, generator=gen(seed + 300))
    return Case("unequal_loader", model, loader, loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True)


# -- 12. NumPy-augmented loader, frozen; a sum-reduced loss --------------------------------------------------------
class NoisyDataset(torch.utils.data.Dataset):
    """Noise from NumPy's global RNG added at every read, as augmentation pipelines do: the raw loader differs between
    passes (``lw.DataChangesWarning``); ``lw.freeze`` reads it once, so the reference sees the batches the library
    sees."""

    def __init__(self, seed=0, n=21):
        g = gen(seed)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + torch.from_numpy(np.random.normal(0.0, 0.3, 6).astype(np.float32)), self.y[i]


def augmented_loader(seed=0):
    model = randomize(MLP(), seed).train()
    loader = torch.utils.data.DataLoader(NoisyDataset(seed + 100), batch_size=8, shuffle=True,
                                         generator=gen(seed + 300))  # 8, 8, 5
    return Case("augmented_loader", model, lw.freeze(loader, seed=seed), loss_fn=nn.CrossEntropyLoss(),
                start=perturbed(model, seed + 200), hessian=True, extra={"loader": loader},
                notes="NumPy-RNG augmentation and shuffle, frozen by lw.freeze")


def sum_reduced(seed=0):
    """A loss module that sums over the batch: an error at construction (each batch's loss must be its mean)."""
    model = randomize(MLP(), seed).train()
    g = gen(seed + 100)
    x, y = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    return Case("sum_reduced", model, (x, y), loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                extra={"raises": (ValueError, r"reduction='sum'.*reduction='mean'")})


# -- 13. bfloat16 and float16 models -----------------------------------------------------------------------------
class NormMLP(nn.Module):
    """Linear-GELU-LayerNorm-Linear: LayerNorm and GELU are where low precision rounds most."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 12), nn.LayerNorm(12), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(self.norm(F.gelu(self.fc1(x))))


def _low_precision(name, dtype, seed, tol, hessian_rtol):
    model = randomize(NormMLP(), seed, norm_scale=0.2).to(dtype).train()
    g = gen(seed + 100)
    x, y = torch.randn(48, 6, generator=g).to(dtype), torch.randint(0, 3, (48,), generator=g)
    # the reference forms a point in float64 and rounds it once, the library adds each term in the dtype (as an
    # optimizer does): an ulp apart in the weights, about 1e-2 (bf16) / 1e-3 (fp16) of the loss
    return Case(name, model, (x, y), loss_fn=nn.CrossEntropyLoss(), start=perturbed(model, seed + 200),
                hessian=True, tol=tol, hessian_rtol=hessian_rtol, notes=f"a {dtype} model and data")


def bfloat16(seed=0):
    return _low_precision("bfloat16", torch.bfloat16, seed, {"rtol": 3e-2, "atol": 1e-3}, 1e-2)


def float16(seed=0):
    return _low_precision("float16", torch.float16, seed, {"rtol": 4e-3, "atol": 1e-4}, 1e-3)


BUILDERS = {f.__name__: f for f in (
    gpt2, bert, tied_autoencoder, shared_linear, reused_linear, lstm, gru, parametrized, frozen_default, frozen_all,
    frozen_lora, frozen_names, compiled, batchnorm, l2_regularized, dict_batch, weighted_triples, unequal_batches,
    unequal_loader, augmented_loader, bfloat16, float16)}
ERRORS = {f.__name__: f for f in (sum_reduced,)}  # cases the Landscape refuses, with the error they must get


def build(name, seed=0) -> Case:
    return (BUILDERS.get(name) or ERRORS[name])(seed)
