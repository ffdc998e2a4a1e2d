"""Fictional patient records with multiple-choice questions (LongHealth-style, arXiv 2512.24695 §9.1).

LongHealth (Adams et al. 2024) gives a model the clinical record of one fictional patient
(5-7K words) and asks multiple-choice questions whose answer is in the record. The records here
are generated, so no fact can be in a model's pretraining data:

* **Record.** A header (name, date of birth, admission date, attending physician, primary
  diagnosis, documented allergy), then dated visit notes. Each visit starts one medication at a
  daily dose, or records a lab value; between the facts, neutral clinical narrative (no names,
  drugs, diagnoses, doses or dates) pads the record to ``length`` tokens.
* **Questions.** One per fact kind (diagnosis, physician, allergy, date of birth, a medication
  started at a given visit, its dose, a lab value), ``num_questions`` of them, drawn with the
  seed. A question is a cloze prompt ``"Question: ... \\nAnswer:"``; the four options are
  continuations scored by log-likelihood, never written into the prompt, so the prompt cannot
  leak the answer (tested). The three distractors come from the same pool as the answer and do
  **not** occur in the record: the record favours the right option, and only a model that kept
  something of the record can use that.

Every sample depends only on ``(seed, length, index)`` (:func:`~.common.make_rng`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nestlearn.data.synthetic.common import make_rng
from nestlearn.data.tokenizers import Tokenizer

__all__ = ["MCQuestion", "RecordSample", "record_sample", "generate_records"]

FIRST = (
    "Alma Brenner Corvin Dalia Edric Fenna Gideon Hedda Ilse Jorvan Kasimir Liesel Marten Nadia "
    "Osric Petra Quillon Rosalind Soren Tamsin Ulric Vesna Wendel Xenia Yorick Zelda"
).split()
LAST = (
    "Abernathy Blackwood Castellan Drummond Ellery Fairweather Galloway Hartigan Ingersoll "
    "Jessup Kettering Lindqvist Marchetti Northcott Okonkwo Pemberton Quarles Rutherford "
    "Stanhope Thorncroft Underhill Vandermeer Whitlock Yarborough"
).split()
DOCTORS = (
    "Dr. Amsel Dr. Bartok Dr. Cruikshank Dr. Delacroix Dr. Eriksen Dr. Fontaine Dr. Grimaldi "
    "Dr. Holloway Dr. Iverson Dr. Jablonski Dr. Kowalczyk Dr. Lindgren Dr. Moreau Dr. Nakamura "
    "Dr. Oyelaran Dr. Pellegrini"
).split("Dr. ")[1:]
DIAGNOSES = (
    "chronic pancreatitis", "sarcoidosis", "myasthenia gravis", "ulcerative colitis",
    "pulmonary embolism", "polymyalgia rheumatica", "infective endocarditis",
    "Guillain-Barre syndrome", "hemochromatosis", "diverticulitis", "Addison disease",
    "temporal arteritis", "nephrotic syndrome", "Lyme neuroborreliosis", "aortic stenosis",
    "autoimmune hepatitis",
)  # fmt: skip
DRUGS = (
    "metoprolol", "amiodarone", "prednisolone", "azathioprine", "furosemide", "levetiracetam",
    "mesalazine", "apixaban", "doxycycline", "pantoprazole", "spironolactone", "methotrexate",
    "pyridostigmine", "hydrocortisone", "ceftriaxone", "allopurinol", "tacrolimus", "rifampicin",
    "lamotrigine", "colchicine",
)  # fmt: skip
ALLERGIES = (
    "penicillin", "sulfonamides", "latex", "iodinated contrast", "codeine", "aspirin",
    "peanuts", "shellfish", "bee venom", "erythromycin",
)  # fmt: skip
DOSES = ("5 mg", "10 mg", "20 mg", "25 mg", "40 mg", "50 mg", "75 mg", "100 mg", "150 mg",
         "200 mg", "250 mg", "400 mg", "500 mg", "750 mg", "1000 mg")  # fmt: skip
LABS = {"hemoglobin": ("g/dL", 7.0, 16.0), "creatinine": ("mg/dL", 0.5, 3.5),
        "potassium": ("mmol/L", 2.9, 5.9), "CRP": ("mg/L", 1.0, 180.0)}  # fmt: skip
MONTHS = ("January February March April May June July August September October November "
          "December").split()  # fmt: skip
NARRATIVE = (
    "The patient was seen on the ward and appeared comfortable at rest.",
    "Vital signs were stable throughout the afternoon.",
    "The nursing staff reported an uneventful night.",
    "Oral intake was adequate and the patient was mobilising with assistance.",
    "The findings were discussed with the patient, who asked several questions.",
    "Physiotherapy continued twice daily as planned.",
    "The wound dressing was changed and the site looked clean.",
    "No new complaints were raised during the morning round.",
    "The family visited and was updated on the plan of care.",
    "Sleep was reported as fair, with one episode of waking.",
    "Fluid balance was recorded and remained within the expected range.",
    "The patient walked the length of the corridor without shortness of breath.",
    "Pain was controlled and scored as mild on the numeric scale.",
    "The social worker reviewed the discharge arrangements.",
    "Bowel function was normal and appetite was improving.",
    "Auscultation of the chest revealed no new sounds.",
    "The ward pharmacist reviewed the current medication chart.",
    "The patient expressed satisfaction with the care received.",
    "Blood pressure readings were taken every four hours.",
    "A follow-up appointment in the outpatient clinic was discussed.",
)  # fmt: skip


@dataclass
class MCQuestion:
    """A multiple-choice question: a cloze ``prompt`` and ``options`` (continuations)."""

    kind: str
    prompt: str
    options: list[str]
    answer: int
    """Index of the right option."""
    fact_char: int = -1
    """Character offset in the document where the answer is stated (``-1``: unknown)."""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "prompt": self.prompt, "options": self.options,
                "answer": self.answer, "fact_char": self.fact_char}  # fmt: skip


@dataclass
class RecordSample:
    """One patient record (``document``) and its questions."""

    index: int
    seed: int
    length: int
    document: str
    questions: list[MCQuestion]
    facts: dict[str, str] = field(default_factory=dict)


def _date(rng: np.random.Generator, year_lo: int, year_hi: int) -> str:
    return f"{MONTHS[int(rng.integers(12))]} {int(rng.integers(1, 29))}, {int(rng.integers(year_lo, year_hi))}"


def _options(
    answer: str, pool: list[str], doc: str, rng: np.random.Generator
) -> tuple[list[str], int]:
    """``answer`` and three distractors from ``pool`` that do not occur in ``doc``."""
    free = [p for p in pool if p != answer and p not in doc]
    if len(free) < 3:
        raise ValueError(f"too few distractors for {answer!r}: {free}")
    pick = [free[i] for i in rng.choice(len(free), size=3, replace=False)]
    pos = int(rng.integers(4))
    pick.insert(pos, answer)
    return pick, pos


def record_sample(
    tokenizer: Tokenizer, length: int, index: int, *, seed: int = 0, num_questions: int = 6
) -> RecordSample:
    """Record ``index`` of about ``length`` tokens (at most ``length``; deterministic)."""
    if not 1 <= num_questions <= 7:
        raise ValueError(f"num_questions must be 1..7 (one per fact kind), got {num_questions}")
    rng = make_rng(seed, "records", length, index)
    name = f"{FIRST[int(rng.integers(len(FIRST)))]} {LAST[int(rng.integers(len(LAST)))]}"
    diag = DIAGNOSES[int(rng.integers(len(DIAGNOSES)))]
    doctor = DOCTORS[int(rng.integers(len(DOCTORS)))].strip()
    allergy = ALLERGIES[int(rng.integers(len(ALLERGIES)))]
    dob = _date(rng, 1931, 1990)
    admit = _date(rng, 2021, 2024)
    drugs = [DRUGS[i] for i in rng.choice(len(DRUGS), size=3, replace=False)]
    doses = [DOSES[i] for i in rng.choice(len(DOSES), size=3, replace=False)]
    lab = list(LABS)[int(rng.integers(len(LABS)))]
    unit, lo, hi = LABS[lab]
    lab_value = f"{rng.uniform(lo, hi):.1f} {unit}"
    days = sorted(int(d) for d in rng.choice(np.arange(2, 28), size=4, replace=False))
    facts_text = [
        f"Clinical record of {name}. Date of birth: {dob}. Admitted on {admit}.",
        f"Attending physician: Dr. {doctor}. Primary diagnosis: {diag}.",
        f"Documented allergy: {allergy}.",
    ]
    visits = [
        f"Day {days[i]} of admission: {drugs[i]} was started at a daily dose of {doses[i]}."
        for i in range(3)
    ] + [f"Day {days[3]} of admission: the {lab} level was measured at {lab_value}."]
    order = rng.permutation(4)
    pieces = facts_text[:2] + [facts_text[2]] + [visits[i] for i in order]
    # spread the facts over the record: narrative between them until ``length`` tokens
    need = len(tokenizer.encode(" ".join(pieces))) + 8
    budget = length - need
    if budget < 0:
        raise ValueError(
            f"length={length} is too short for a record with tokenizer {tokenizer.name}: its "
            f"facts alone take {need} tokens; use length >= {need + 256}"
        )
    # round-robin over the gaps after each fact, so the facts spread over the whole record
    gaps = len(pieces)
    narrative: list[list[str]] = [[] for _ in range(gaps)]
    used, count, misses = 0, 0, 0
    while misses < 20:
        s = NARRATIVE[int(rng.integers(len(NARRATIVE)))]
        n = len(tokenizer.encode(" " + s))
        if used + n > budget:
            misses += 1  # a shorter sentence may still fit
            continue
        narrative[count % gaps].append(s)
        used, count = used + n, count + 1
    parts: list[str] = []
    for i, p in enumerate(pieces):
        parts.append(p)
        parts.extend(narrative[i])
    document = " ".join(parts)

    def q(kind: str, text: str, answer: str, pool: list[str]) -> MCQuestion:
        opts, pos = _options(answer, pool, document, rng)
        return MCQuestion(kind, f"Question: {text}\nAnswer:", [" " + o for o in opts], pos,
                          document.find(answer))  # fmt: skip

    k = int(rng.integers(3))
    lab_pool = [f"{rng.uniform(lo, hi):.1f} {unit}" for _ in range(12)]
    dose_pool = [d for d in DOSES if d not in doses] + [doses[k]]
    candidates = [
        q("diagnosis", f"What is the primary diagnosis of {name}?", diag, list(DIAGNOSES)),
        q(
            "physician",
            f"Who is the attending physician of {name}?",
            f"Dr. {doctor}",
            [f"Dr. {d.strip()}" for d in DOCTORS],
        ),  # fmt: skip
        q("allergy", f"Which allergy is documented for {name}?", allergy, list(ALLERGIES)),
        q(
            "birth",
            f"What is the date of birth of {name}?",
            dob,
            [_date(rng, 1931, 1990) for _ in range(12)],
        ),  # fmt: skip
        q(
            "medication",
            f"Which medication was {name} started on, on day {days[k]} of admission?",
            drugs[k],
            list(DRUGS),
        ),  # fmt: skip
        q("dose", f"What daily dose of {drugs[k]} was {name} started on?", doses[k], dose_pool),
        q(
            "lab",
            f"What was {name}'s {lab} level on day {days[3]} of admission?",
            lab_value,
            lab_pool,
        ),  # fmt: skip
    ]
    keep = sorted(rng.choice(len(candidates), size=num_questions, replace=False).tolist())
    facts = {"name": name, "diagnosis": diag, "physician": f"Dr. {doctor}", "allergy": allergy,
             "birth": dob, "medication": drugs[k], "dose": doses[k], "lab": lab_value}  # fmt: skip
    return RecordSample(index, seed, length, document, [candidates[i] for i in keep], facts)


def generate_records(
    tokenizer: Tokenizer, length: int, num_samples: int, *, seed: int = 0, num_questions: int = 6
) -> list[RecordSample]:
    """Records ``0 .. num_samples - 1`` of about ``length`` tokens each (see the module doc)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return [
        record_sample(tokenizer, length, i, seed=seed, num_questions=num_questions)
        for i in range(num_samples)
    ]
