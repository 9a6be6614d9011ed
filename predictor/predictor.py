"""The Predictor: what answers for a sample and a drug, fitted once and asked by every output.

It holds the network (network.py) and what completes it: each training drug's spread over its
training lines (spread.py: z and percentile), the predictor of drugs new to it (newdrugs.py) and,
for a bulk reference (one profile per cell line), the stack (stack.py: the network blended with
one ridge per drug, and the interval's calibration).

    predictor = Predictor.fit(network, prepared, rows, seed=0)   # once, after the network trained
    predictor.save("best.pt");  predictor = Predictor.load("best.pt")   # or Predictor.load(): a reference
    predictor.answer(samples)                     # every output's columns (Samples: tokens, values)
    predictor.answer(adata, groupby="sample")     # cells or bulk samples: a ranking per group (cells.py)

`answer` is the one way any output gets its columns: a run's test rows, a table's rows, the
groups of an .h5ad, its cells, a matrix of bulk samples, a notebook's AnnData. Known and new drugs
are told apart here, once; the stack reads its own inputs; single-cell and bulk models differ
inside, not at the callers.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common import PipelineError
from ingest.prepare import Prepared
from ingest.table import key_rows, pair_labels, profiles_path, structureless_pairs
from ingest.tokens import TokenTable, vocab_index
from model import count_parameters
from predictor import cells, checkpoint, reference
from predictor.align import align
from predictor.baselines import design_of
from predictor.drivers import KEPT, Drivers, parts
from predictor.network import Network
from predictor.newdrugs import FAR, NewDrugs, fill, fingerprints, nearest, similarity_to_training
from predictor.samples import Samples
from predictor.skill import BAR, FOLDS, Skill
from predictor.spread import DrugSpread
from predictor.stack import LEVEL, Stack, fit_stack

log = logging.getLogger("ic50.predictor")


@dataclass
class Predictor:
    network: Network
    spread: DrugSpread | None = None    # None in checkpoints before format 7: no z, no percentile
    stack: Stack | None = None          # a bulk reference's; None for other models
    newdrugs: NewDrugs | None = None    # None in checkpoints before format 9: new drugs by the network
    skill: Skill | None = None          # a reference's; None in checkpoints before format 11
    path: Path | None = None            # the checkpoint it was read from
    annotations: pd.DataFrame | None = None   # drug, target, pathway (a reference built with them)
    described: set = field(default_factory=set, repr=False)   # new drugs the log has named
    _drivers: Drivers | None = field(default=None, repr=False)

    @property
    def bulk(self) -> bool:
        """A model of normalised profiles (bulk expression): it answers cells group by group, each
        group's mean profile aligned to its training profiles."""
        return self.network.cfg.value_kind == "normalised"

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, network: Network, prep: Prepared, rows: dict[str, np.ndarray], *, seed: int = 0
            ) -> "Predictor":
        """Everything beside the trained network, from the run's training and validation rows
        (never its test rows): each drug's spread and the new-drug predictor from the training
        pairs; for a reference (profiles stored per line), the ridge member on the training lines,
        the blend and the interval on the validation lines. Rank 0 alone."""
        train_pairs = pair_labels(prep.keys, rows["train"])
        predictor = cls(network, DrugSpread.fit(train_pairs), newdrugs=NewDrugs.fit(train_pairs, prep.drugs))
        if profiles_path(prep.source) is not None:
            design = design_of(prep.source, prep.keys, rows["train"], rows["val"],
                               value_kind=network.cfg.value_kind, seed=seed)
            val = network.predict(network.features(prep.store, rows["val"]), local=True)
            alone, alone_val = structureless_pairs(prep.source), None
            if alone is not None:   # drugs without a SMILES: their pairs join the ridge member's
                n = len(design.train)
                design, alone_val = design.with_pairs(alone)
                predictor.spread = DrugSpread.fit(pd.concat([train_pairs, design.train.iloc[n:]]))
                alone = sorted(set(alone["drug"]))
            predictor.stack = fit_stack(design, key_rows(prep.keys, rows["val"]), val, alone, alone_val)
            predictor.calibrate_new_drugs()
            if predictor.stack is not None:
                predictor._fit_skill(design, seed)
        return predictor

    def _fit_skill(self, design, seed: int) -> None:
        stack = self.stack
        if stack.alone:
            log.info("%d drugs without a SMILES are answered by the ridge member alone (no network, no "
                     "structure): %.0f%% intervals +- %.2f sd, against +- %.2f for the blend",
                     len(stack.alone), 100 * LEVEL, stack.alone_scales[LEVEL], stack.scales[LEVEL])
        q_alone = stack.alone_scales[LEVEL] if stack.alone_scales else None
        self.skill = Skill.fit(design, stack.ridge, stack.scales[LEVEL], seed, stack.alone, q_alone)
        log.info("per-drug skill (the ridge member cross-fitted over %d folds of the training lines): median "
                 "%.2f; %d of %d drugs below %.1f", FOLDS, np.nanmedian(self.skill.pearson),
                 int((self.skill.pearson < BAR).sum()), len(self.skill.drugs), BAR)

    def calibrate_new_drugs(self) -> None:
        """The new-drug interval at new samples, measured on the validation lines the stack keeps
        (NewDrugs.calibrate_lines)."""
        nd, stack = self.newdrugs, self.stack
        if nd is None or stack is None or stack.calibration is None:
            return
        c = stack.calibration
        known = self._known(self._held_out(), nd.drugs)
        nd.calibrate_lines(known, pd.DataFrame({"line": c.rows, "drug": c.drugs, "LN_IC50": c.labels}))
        if nd.line_scales:
            log.info("new drugs at new samples: %.0f%% intervals +- %.2f predicted sd (the validation "
                     "lines, each training drug predicted from the others)", 100 * LEVEL,
                     nd.line_scales[LEVEL])

    # ------------------------------------------------------------------ answering

    def answer(self, samples, drugs=None, **options):
        """Samples -> a frame of every output's columns, one row per (sample, drug): `sample` (its
        position), `drug`, `ln_ic50`, with a stack `network`, `ridge` and the interval
        (`ln_ic50_low`, `ln_ic50_high`), with the spread `z`, `percentile` (and `z_low`, `z_high`),
        with a stack each prediction's `drivers`, `drivers_share`, `z_network` and `z_linear`
        (drivers.py), with a skill each drug's `skill`, then `new_drug` and
        `similarity_to_training`. `drugs`: name -> SMILES of the drugs asked for (default: every
        drug the predictor knows, known_drugs), or of the samples' own drugs.

        An AnnData (in memory), a DataFrame of bulk samples (rows samples, columns genes) or an
        open .h5ad -> cells.Answer: a ranking per group and each cell's predictions (cells.py;
        `drugs` may then be names)."""
        if not isinstance(samples, Samples):
            return cells.answer(self, samples, drugs, **options)
        smiles = self.known_drugs() if drugs is None else dict(drugs)
        n = len(samples)
        if samples.drug is not None:
            at, drug = np.arange(n), samples.drug
            network = self.network.predict(self.network.features(samples.tokens, samples.rows, smiles),
                                           local=True)
        else:
            names = list(smiles)
            at, code = np.repeat(np.arange(n), len(names)), np.tile(np.arange(len(names)), n)
            drug = np.asarray(names, dtype=object)[code]
            network = self._network_pairs(samples, at, code, names, smiles)
        values = samples.values
        if values is None and self.stack is not None:
            values = samples.tokens.over(self.network.vocab)
        profile = samples.tokens.profiles(samples.rows)[at]
        scale = self.aligned_scale(samples.found, samples.centred) if samples.found is not None else None
        if self.stack is not None and samples.lines is None:
            log.info("%s%s", self.stack.interval, "" if scale is None else
                     f"; widened to +- {scale:.2f} sd for this file's alignment ({int(samples.found.sum())} "
                     f"genes; the validation lines sent through it), which does not cover what single "
                     f"cells add beyond it")
        out = self._known_columns(drug, network, values, profile, scale)
        if self.drivers is not None and values is not None and "ridge" in out:
            out.update(self._explained(drug, out, values, profile))
        new, sim = self.novelty(smiles)
        is_new = pd.Series(drug).map(dict(zip(smiles, new))).to_numpy(bool)
        if is_new.any():
            out = self._new_drug_columns(out, is_new, drug, smiles, samples, at, values, profile, scale)
        if self.skill is not None:
            out["skill"] = self.skill.of(drug)[0]
        similarity = pd.Series(drug).map(dict(zip(smiles, sim))).to_numpy(float)
        out.update(new_drug=is_new, similarity_to_training=similarity)
        return pd.DataFrame({"sample": at, "drug": drug, **out})

    def _network_pairs(self, samples: Samples, at: np.ndarray, code: np.ndarray, names: list[str],
                       smiles: dict) -> np.ndarray:
        """The network's prediction of each (sample at, drug names[code]) pair; NaN for a drug
        without a structure (the ridge member answers it alone)."""
        has = np.array([bool(smiles[d]) for d in names], dtype=bool)
        out = np.full(len(code), np.nan)
        if has.any():
            keep = has[code]
            renumber = np.cumsum(has) - 1
            profiles = samples.tokens.profiles(samples.rows)[at[keep]]
            out[keep] = self.network.predict_pairs(samples.tokens, profiles, renumber[code[keep]],
                                                   [d for d, h in zip(names, has) if h], smiles)
        return out

    def known_drugs(self) -> dict[str, str | None]:
        """Name -> SMILES of every drug the predictor answers without being told its structure:
        the network's, and those the ridge member answers alone (None: no structure known)."""
        alone = {d: None for d in (self.stack.alone or [])} if self.stack is not None else {}
        return {**self.network.drugs, **alone}

    def _known_columns(self, drug, network: np.ndarray, values, profile, scale) -> dict[str, np.ndarray]:
        """ln IC50 (with a stack, the blend, with the network's own prediction, the ridge member's
        and the interval beside it), then z, percentile and the interval in z against the drug's
        training lines."""
        out = {"ln_ic50": np.asarray(network, dtype=np.float64)}
        if self.stack is not None and values is not None:
            out = self.stack.columns(drug, network, self.stack.inputs(values, self.network.vocab), profile,
                                     scale=scale)
        if self.spread is not None:
            out.update(self.spread.columns(drug, out["ln_ic50"], out.get("ln_ic50_low"),
                                           out.get("ln_ic50_high")))
        return out

    @property
    def drivers(self) -> Drivers | None:
        """The ridge member's weights in z units, genes named (drivers.py); None without a stack."""
        if self._drivers is None and self.stack is not None:
            self._drivers = Drivers.of(self.stack, self.network.genes)
        return self._drivers

    def _explained(self, drug, out: dict, values: np.ndarray, profile: np.ndarray) -> dict[str, np.ndarray]:
        """Each known drug's prediction split into the network's and the ridge member's parts of
        its z, and the genes that move the member's (drivers.py)."""
        x = self.stack.inputs(values, self.network.vocab)
        sd = self.spread.of(drug)[1] if self.spread is not None else self.stack.unit(drug)
        return {**self.drivers.columns(x, drug, profile),
                **parts(self.stack, drug, out["network"], out["ridge"], sd)}

    def drivers_table(self, values: np.ndarray, drug, at: np.ndarray, top: int = KEPT) -> pd.DataFrame | None:
        """Every (sample, drug) pair's `top` drivers: sample (position in values), drug, rank, gene,
        contribution (z) and expression (sd from the training lines' mean); None without a stack."""
        if self.drivers is None:
            return None
        drug = np.asarray(drug, dtype=object)
        long = self.drivers.long(self.stack.inputs(values, self.network.vocab), drug, at, top)
        pair = long.pop("pair").to_numpy()
        return pd.concat([pd.DataFrame({"sample": np.asarray(at)[pair], "drug": drug[pair]}),
                          long.reset_index(drop=True)], axis=1)

    def explain(self, drug: str, top: int = 20) -> tuple[pd.DataFrame, str]:
        """A drug's genes, strongest weight first (rank, gene, weight in z per sd of the gene,
        when_high: sensitive or resistant), and a line that says what they are and how well the
        predictor knows the drug."""
        d = self.drivers
        if d is None:
            raise PipelineError(f"{self.path or 'this checkpoint'} has no per-drug weights to explain: "
                                f"drivers come from a bulk reference's ridge member (checkpoint format 8 or "
                                f"later); single-cell models have none.")
        if drug not in d.drugs:
            close = difflib.get_close_matches(drug.lower(), [x.lower() for x in d.drugs], n=3, cutoff=0.6)
            close = [x for x in d.drugs if x.lower() in close]
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else "card.json lists them"
            why = ("it is known to the network but has too few training lines for a ridge member"
                   if drug in self.network.drugs else
                   f"the reference has no drug of that name ({len(d.drugs)} drugs; {hint})")
            raise PipelineError(f"--explain {drug!r}: {why}.")
        part = ("it answers this drug alone: no structure" if self.stack.is_alone([drug])[0]
                 else f"blend weight {self.stack.weights[1]:.2f}")
        about = f"{drug}: the ridge member's weights ({part}), in z per sd of each gene"
        if self.skill is not None and drug in self.skill.drugs:
            i = self.skill.drugs.index(drug)
            pearson, coverage = self.skill.pearson[i], self.skill.coverage[i]
            weak = f"; below {BAR}: weakly known" if pearson < BAR else ""
            about += (f"; skill on unseen lines {pearson:.2f} (Pearson, cross-fitted over its "
                      f"{self.skill.lines[i]} training lines{weak}), 90% interval coverage "
                      f"{100 * coverage:.0f}%")
        return d.of_drug(drug, top), about + (". Negative: sensitive when high; the network's part is not "
                                              "attributed.")

    def _new_drug_columns(self, out, is_new, drug, smiles, samples, at, values, profile, scale) -> dict:
        """The pairs of drugs new to the model, from the new-drug predictor: at the training lines
        (a run's rows) from the training drugs' measured responses there, at new samples from the
        predictor's own predictions for the training drugs; the network alone where neither can."""
        nd, rows = self.newdrugs, np.flatnonzero(is_new)
        new_smiles = [smiles[d] for d in drug[rows]]
        if nd is not None and samples.lines is not None:
            pred, mean, sd = nd.at_training_lines(new_smiles, samples.lines[at[rows]])
            hit = np.isfinite(pred)
            cols = nd.columns(pred[hit], mean[hit], sd[hit], at_lines=True)
            log.info("%d rows of %d new drugs: predicted from the training drugs' responses at the same "
                     "lines, weighted by structure (newdrugs.py)", int(hit.sum()), len(set(drug[rows])))
            out.setdefault("network", out["ln_ic50"].copy())   # scored beside the model
            return fill(out, rows[hit], cols)
        self.describe_new_drugs({d: smiles[d] for d in dict.fromkeys(drug[rows])})
        if nd is None or values is None:   # single-cell models, tables without a stack: the network
            return out
        return fill(out, rows, self._at_new_samples(values, profile[rows], new_smiles, scale))

    def _at_new_samples(self, values: np.ndarray, profile: np.ndarray, smiles: list[str],
                        scale: float | None) -> dict[str, np.ndarray]:
        """The columns of new drugs at new samples, one row per (profile of `values`, SMILES): each
        predicted from the predictor's own predictions for the training drugs at the same profile,
        with the interval for new samples (widened as the known drugs' is, for an aligned input)."""
        nd = self.newdrugs
        used, at = np.unique(profile, return_inverse=True)
        known = self._known(values[used], nd.drugs)
        uniq, which = np.unique(np.asarray(smiles, dtype=object), return_inverse=True)
        w = nd.weights(list(uniq))
        mean, sd = nd.moments(w)
        ratio = None if scale is None else scale / self.stack.scales[LEVEL]
        log.info("%d new drug(s): each predicted from the predictions for the %d training drugs at the "
                 "same sample, weighted by structure (kernel ridge); %s", len(uniq), len(nd.drugs),
                 f"{100 * LEVEL:.0f}% intervals +- {nd.interval(1.0, False, ratio):.2f} x each drug's "
                 f"predicted sd, calibrated on validation lines with each training drug held out"
                 if nd.line_scales else "no interval: the checkpoint holds no validation lines to "
                 "calibrate one at new samples")
        return nd.columns(nd.from_predictions(w, known)[at, which], mean[which], sd[which], at_lines=False,
                          scale=ratio)

    def _known(self, values: np.ndarray, drugs: list[str]) -> np.ndarray:
        """[profiles, drugs] the predictor's ln IC50 (with a stack, the blend) of profiles given
        as values over the vocabulary, for training drugs: what a new drug's prediction is made of."""
        network = self.network.predict_grid(values, drugs).ravel()
        group = np.repeat(np.arange(len(values)), len(drugs))
        names = np.tile(np.asarray(drugs, dtype=object), len(values))
        blend = self._known_columns(names, network, values, group, None)["ln_ic50"]
        return blend.reshape(len(values), len(drugs))

    def _held_out(self) -> np.ndarray:
        """[validation lines, vocabulary] the raw profiles of the lines the stack keeps for
        calibration (Stack.calibration)."""
        stack, vocab = self.stack, self.network.vocab
        pos, known = vocab_index(vocab, stack.ridge.genes)
        values = np.zeros((len(stack.calibration.profiles), len(vocab)))
        values[:, pos[known]] = stack.calibration.profiles[:, known]
        return values

    def aligned_scale(self, found: np.ndarray, centre: bool) -> float | None:
        """The interval's quantile for profiles aligned from another platform: the validation lines
        the stack keeps, sent through the same alignment with the genes this input measures
        (`found`, over the vocabulary) and centred as its groups are, predicted, and the conformal
        quantile of their errors taken again; never below the training platform's. None where
        the checkpoint keeps no validation lines (before format 8)."""
        stack = self.stack
        if stack is None or stack.calibration is None:
            return None
        c = stack.calibration
        aligned = align(self._held_out(), found, self.network.domain, centre=centre)
        names, code = np.unique(np.asarray(c.drugs, dtype=object), return_inverse=True)
        network = self.network.predict_pairs(TokenTable.dense(aligned, self.network.vocab), c.rows,
                                             code.reshape(-1), list(names))   # the measured pairs alone
        ridge = stack.ridge.predict(stack.inputs(aligned, self.network.vocab), c.drugs, c.rows)
        pred, _, _ = stack.blend(c.drugs, network, ridge)
        return max(stack.quantiles(c.drugs, c.labels, pred)[LEVEL], stack.scales[LEVEL])

    # ------------------------------------------------------------------ drugs

    def training_drugs(self) -> list[str]:
        """The drugs the model learnt from: those with training lines (every drug it names in
        checkpoints before format 7, which do not say)."""
        return list(self.spread.drugs) if self.spread is not None else list(self.network.drugs)

    def novelty(self, drugs: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """(new_drug, similarity_to_training) of drugs (name -> SMILES): whether each is new to the
        model, and its highest Tanimoto similarity to a training drug."""
        names = list(drugs)
        known = set(self.training_drugs())
        new = np.array([d not in known for d in names], dtype=bool)
        if not new.any():
            return new, np.ones(len(names))
        asked = [drugs[d] for d, is_new in zip(names, new) if is_new]
        if self.newdrugs is not None:
            sim = self.newdrugs.similarity(asked).max(1)
        else:
            pool = [self.network.drugs[d] for d in known if d in self.network.drugs]
            sim = similarity_to_training(pool, asked)
        out = np.ones(len(names))
        out[new] = sim
        return new, out

    def describe_new_drugs(self, drugs: dict[str, str]) -> None:
        """The log's word on each drug new to the model: its most similar training drugs, and a
        warning where none is close (FAR: below it, structure told nothing beyond the lines'
        general sensitivity on GDSC2; docs/search.md). Each drug once."""
        drugs = {d: s for d, s in drugs.items() if d not in self.described}
        new, sim = self.novelty(drugs)
        self.described.update(drugs)
        if not new.any():
            return
        nd = self.newdrugs
        if nd is not None:
            pool, fps = nd.drugs, nd.fingerprints
        else:   # an older checkpoint: the same similarity, from its training drugs' SMILES
            log.warning("this checkpoint predates the new-drug predictor (checkpoint format 9): its %d new "
                        "drug(s) come from the network alone, without an interval, z or percentile; "
                        "rebuild it to predict new drugs from their similarity to the training drugs.",
                        int(new.sum()))
            pool = [d for d in self.training_drugs() if d in self.network.drugs]
            fps = fingerprints([self.network.drugs[d] for d in pool])
        for name, is_new, s in zip(drugs, new, sim):
            if not is_new:
                continue
            near = ", ".join(f"{d} {v:.2f}" for d, v in nearest(pool, fps, drugs[name]))
            log.info("new drug %s: most similar training drugs (Tanimoto): %s", name, near)
            if s < FAR:
                log.warning("new drug %s is far from every training drug (similarity %.2f < %.1f): its "
                            "prediction is mostly each sample's general sensitivity; read its rank with "
                            "care", name, s, FAR)

    # ------------------------------------------------------------------ the record and the checkpoint

    def record(self) -> dict:
        """What a run's metrics.json keeps of the predictor: the network's drug encoder, size and
        training history, the stack's weights and interval calibration, the new-drug predictor's."""
        n = self.network
        out = {"drug_encoder": n.drug_encoder, "best_epoch": n.best_epoch, "epochs_run": len(n.history),
               "parameters": count_parameters(n.model), "history": n.history}
        if self.stack is not None:
            out["stack"] = {"weights": self.stack.weights.tolist(), "level": LEVEL,
                            "scales": {str(k): v for k, v in (self.stack.scales or {}).items()}}
        if self.newdrugs is not None:
            out["newdrugs"] = self.newdrugs.record()
        if self.skill is not None:
            sk = self.skill
            out["skill"] = {"folds": FOLDS, "bar": BAR, "drugs": dict(zip(sk.drugs, sk.pearson)),
                            "coverage": dict(zip(sk.drugs, sk.coverage))}
        if self.stack is not None and self.stack.alone:
            out["without_smiles"] = {"drugs": list(self.stack.alone), "scales": self.stack.alone_scales}
        return out

    def save(self, path: str | Path, settings: dict | None = None) -> None:
        """best.pt (checkpoint.py); `settings`: the run's, kept for the record."""
        checkpoint.write(Path(path), self.network, {"stack": self.stack, "spread": self.spread,
                                                    "newdrugs": self.newdrugs, "skill": self.skill}, settings)

    @classmethod
    def load(cls, path: str | Path | None = None, *, reference_name: str | None = None,
             device="cpu") -> "Predictor":
        """A checkpoint (best.pt of a run), or a ready reference by name; neither: the default
        reference (`main.py reference` builds it)."""
        path = Path(path) if path else reference.locate(reference_name or reference.DEFAULT)
        log.info("answered by %s", reference.describe(path))
        network, parts = checkpoint.read(path, device)
        if parts["spread"] is None:
            log.warning("this checkpoint predates the per-drug statistics of its training lines "
                        "(checkpoint format 7), so its predictions come as ln IC50 alone, without z or "
                        "percentile, and drugs are ranked by ln IC50 (potency); retrain it for relative "
                        "sensitivity.")
        return cls(network, **parts, path=path, annotations=reference.annotations_of(path))
