"""Clinical safety of radiology summaries, beside ROUGE: CheXpert-style observations from one labeller.

Per study, the ConText labeller (models/chest_findings.py) labels the 14 observations (present /
absent / uncertain / not mentioned) in the findings, the reference impression and the summary.

* false-normal rate: of the studies whose reference is abnormal (a pathology present or uncertain),
  the share whose summary is normal (no pathology present or uncertain: "No Finding"); an empty
  summary (a failed row) reports nothing abnormal, so it counts as normal here;
* false-normal vs findings: the same with the findings as the truth (what a writer can know);
* observation precision / recall / F1 (micro over the 14 observations, positive = present or
  uncertain) of the summary against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.chest_findings import NO_FINDING, OBSERVATIONS, PRESENT, UNCERTAIN, Labelled, analyse

CLINICAL_KEYS = ("false_normal_rate", "false_normal_vs_findings", "obs_precision", "obs_recall", "obs_f1")


def positives(lab: Labelled) -> set[str]:
    out = {o for o in OBSERVATIONS if o != NO_FINDING and lab.labels.get(o) in (PRESENT, UNCERTAIN)}
    if lab.labels.get(NO_FINDING) == PRESENT:
        out.add(NO_FINDING)
    return out


@dataclass
class StudyLabels:
    findings: Labelled
    reference: Labelled


def label_study(findings: str, reference: str) -> StudyLabels:
    return StudyLabels(analyse(findings), analyse(reference))


@dataclass
class ClinicalScores:
    studies: int = 0
    abnormal_refs: int = 0
    false_normals: int = 0
    abnormal_findings: int = 0
    false_normals_vs_findings: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, study: StudyLabels, summary: str, key: str = "") -> dict:
        lab = analyse(summary)
        ref, pred = positives(study.reference), positives(lab)
        self.studies += 1
        false_normal = study.reference.abnormal and not lab.abnormal
        self.abnormal_refs += study.reference.abnormal
        self.false_normals += false_normal
        self.abnormal_findings += study.findings.abnormal
        self.false_normals_vs_findings += study.findings.abnormal and not lab.abnormal
        self.tp += len(ref & pred)
        self.fp += len(pred - ref)
        self.fn += len(ref - pred)
        case = {"id": key, "false_normal": false_normal, "reference_positive": sorted(ref),
                "summary_positive": sorted(pred), "findings_positive": sorted(positives(study.findings))}
        return case

    def row(self) -> dict[str, float]:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        return {
            "false_normal_rate": round(self.false_normals / self.abnormal_refs, 4) if self.abnormal_refs else 0.0,
            "false_normal_vs_findings": (round(self.false_normals_vs_findings / self.abnormal_findings, 4)
                                         if self.abnormal_findings else 0.0),
            "obs_precision": round(100 * p, 2), "obs_recall": round(100 * r, 2),
            "obs_f1": round(100 * (2 * p * r / (p + r) if p + r else 0.0), 2),
            "abnormal_refs": self.abnormal_refs, "false_normals": self.false_normals,
        }
