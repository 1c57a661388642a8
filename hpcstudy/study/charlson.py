"""The Charlson comorbidity index with Danish ICD-10 codes.

Categories, weights and code prefixes follow the Danish ICD-10 coding used in Danish register
research (Thygesen et al., BMC Med Res Methodol 2011), written here as prefixes of the
D-prefixed codes. Any diagnosis (action or secondary) in the look-back window counts. Where a
severe form is present the mild form of the same condition does not count as well: diabetes
with complications over uncomplicated diabetes, severe over mild liver disease, metastatic
solid tumour over any tumour.
"""

from __future__ import annotations

# (category, weight, code prefixes)
CATEGORIES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("myocardial_infarction", 1, ("DI21", "DI22", "DI23")),
    ("heart_failure", 1, ("DI50", "DI110", "DI130", "DI132")),
    ("peripheral_vascular", 1, ("DI70", "DI71", "DI72", "DI73", "DI74", "DI77")),
    ("cerebrovascular", 1, ("DI60", "DI61", "DI62", "DI63", "DI64", "DI65", "DI66", "DI67",
                            "DI68", "DI69", "DG45", "DG46")),
    ("dementia", 1, ("DF00", "DF01", "DF02", "DF03", "DF051", "DG30")),
    ("chronic_pulmonary", 1, ("DJ40", "DJ41", "DJ42", "DJ43", "DJ44", "DJ45", "DJ46", "DJ47",
                              "DJ60", "DJ61", "DJ62", "DJ63", "DJ64", "DJ65", "DJ66", "DJ67",
                              "DJ684", "DJ701", "DJ703", "DJ841", "DJ920", "DJ961", "DJ982",
                              "DJ983")),
    ("connective_tissue", 1, ("DM05", "DM06", "DM08", "DM09", "DM30", "DM31", "DM32", "DM33",
                              "DM34", "DM35", "DM36", "DD86")),
    ("ulcer", 1, ("DK221", "DK25", "DK26", "DK27", "DK28")),
    ("mild_liver", 1, ("DB18", "DK700", "DK701", "DK702", "DK703", "DK709", "DK71", "DK73",
                       "DK74", "DK760")),
    ("diabetes", 1, ("DE100", "DE101", "DE109", "DE110", "DE111", "DE119")),
    ("hemiplegia", 2, ("DG81", "DG82")),
    ("renal", 2, ("DI12", "DI13", "DN00", "DN01", "DN02", "DN03", "DN04", "DN05", "DN07",
                  "DN11", "DN14", "DN17", "DN18", "DN19", "DQ61")),
    ("diabetes_complications", 2, ("DE102", "DE103", "DE104", "DE105", "DE106", "DE107",
                                   "DE108", "DE112", "DE113", "DE114", "DE115", "DE116",
                                   "DE117", "DE118")),
    ("any_tumour", 2, tuple(f"DC{i:02d}" for i in range(0, 76))),
    ("leukaemia", 2, ("DC91", "DC92", "DC93", "DC94", "DC95")),
    ("lymphoma", 2, ("DC81", "DC82", "DC83", "DC84", "DC85", "DC88", "DC90", "DC96")),
    ("severe_liver", 3, ("DB150", "DB160", "DB162", "DB190", "DK704", "DK72", "DK766",
                         "DI85")),
    ("metastatic_tumour", 6, ("DC76", "DC77", "DC78", "DC79", "DC80")),
    ("aids", 6, ("DB21", "DB22", "DB23", "DB24")),
)

# category -> the milder category it replaces
HIERARCHY = {"diabetes_complications": "diabetes", "severe_liver": "mild_liver",
             "metastatic_tumour": "any_tumour"}


def score(flags: dict[str, object]):
    """Charlson index from per-person 0/1 flags of every category (arrays or scalars)."""
    total = 0
    for name, weight, _ in CATEGORIES:
        f = flags[name]
        for severe, mild in HIERARCHY.items():
            if name == mild:
                f = f * (1 - flags[severe])
        total = total + weight * f
    return total
