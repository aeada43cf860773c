"""Finding lexicon: the surface forms of the 18 CT-RATE labels (and of generic abnormal findings).

Each entry is ``(labels, pattern)``: a regular expression (case-insensitive, word-bounded by the
combiner) and the label(s) a match states. One match may state several labels (``pleural or
pericardial effusion``). Entries are tried left to right at each position, so longer / more specific
forms come first. The terms are general radiology vocabulary, never phrases of particular reports.
"""

from __future__ import annotations

GENERIC_ABNORMAL = "_abnormal"  # pseudo-label: an abnormal finding that is none of the 18 labels
EFFUSION_BY_LOCATION = "_effusion"  # pseudo-label: bare effusion / fluid, resolved by its location words

_EFF = r"(?:effusions?|fluid(?: collection)?|hydrothorax|hemothorax|haemothorax)"

FINDING_ENTRIES: tuple[tuple[tuple[str, ...], str], ...] = (
    # --- pleura / pericardium -------------------------------------------------------------------
    (
        ("Pleural effusion", "Pericardial effusion"),
        r"(?:pleural|pleura)(?:[\s,/-]+(?:or|and|and/or|-)?\s*)pericardial(?:[\s-]+(?:thickening|thickness)[\s-]*(?:or|and|-)?)?[\s-]+"
        + _EFF,
    ),
    (
        ("Pleural effusion", "Pericardial effusion"),
        r"pericardial(?:[\s,/-]+(?:or|and|and/or|-)?\s*)pleural(?:[\s-]+(?:thickening|thickness)[\s-]*(?:or|and|-)?)?[\s-]+"
        + _EFF,
    ),
    (
        ("Pericardial effusion",),
        r"pericardial(?:[\s-]+(?:thickening|thickness)[\s-]*(?:or|and|-)?)?[\s-]+"
        + _EFF
        + r"|pericardial[\s-]+(?:thickening|thickness)|pericardi(?:al|um)[\s\w]{0,25}?(?:effusion|fluid)|hemopericardium|pericardial sac[\w\s]{0,20}fluid",
    ),
    (
        ("Pleural effusion",),
        r"pleural(?:[\s-]+(?:thickening|thickness)[\s-]*(?:or|and|-)?)?[\s-]+"
        + _EFF
        + r"|(?:hydro|hemo|haemo|hydropneumo|hydropnomo)thorax|pleural[\s\w]{0,25}?(?:effusion|fluid)",
    ),
    # a bare "effusion" / "fluid": pleural or pericardial by the location it is given (labels.resolve_effusion)
    ((EFFUSION_BY_LOCATION,), r"effusions?|fluid(?: collections?)?"),
    # --- heart ------------------------------------------------------------------------------------
    (
        ("Coronary artery wall calcification",),
        r"coronary(?:[\s-]+arter(?:y|ies|ial))?(?:[\s-]+(?:wall|system|tree))?[\s,-]+(?:calcifications?|calcified|calcific|atheroma\w*|atheroscleros\w*|atherosclerotic|plaques?)"
        + r"|(?:calcifications?|calcified|calcific|atheroma\w*|atherosclerotic|plaques?)(?:[\s\w,-]{0,40}?)\bcoronar(?:y|ies)"
        + r"|(?:lad|lcx|rca|left anterior descending|circumflex)(?: artery)?[\s\w]{0,15}?calcif\w*",
    ),
    (
        ("Cardiomegaly",),
        r"cardiomegal\w*|(?:heart|cardiac)(?: sizes?| dimensions?| diameters?| contours?| silhouette| shadow)?(?:,? (?:is|was|are|were|has|have|appears?|had))?(?: \w+)?\s(?:enlarged|increased|large|larger|widened)"
        r"|(?:enlarged|increased|enlargement of the|increase in(?: the)?) (?:heart|cardiac)(?: sizes?| dimensions?)?|(?:heart|cardiac) (?:size )?(?:enlargement|increase)"
        r"|(?:cardio-?thoracic (?:index|ratio)|\bctr\b)[\s\w]{0,30}?increas\w*|increas\w*[\s\w]{0,30}?(?:cardio-?thoracic (?:index|ratio)|\bctr\b)",
    ),
    # --- aorta / arteries -------------------------------------------------------------------------
    (
        ("Arterial wall calcification",),
        r"(?:calcific|calcified|calcifying)[\s-]+(?:atheroma\w*|atheroscleros\w*|atherosclerotic|plaques?|atherom\w*)"
        + r"|(?:atheroma\w*|atherosclerotic|plaques?)[\s\w-]{0,30}?calcifications?"
        + r"|(?:wall|mural|vascular|vessel|intimal|arterial|aortic) calcifications?|calcifications? (?:in|of|on) the (?:wall|aort\w*|arter\w*|vessel\w*)"
        + r"|calcified plaques?|calcific plaques?|atheroma(?:tous)? plaques?|atheromas?",
    ),
    # --- esophagus ---------------------------------------------------------------------------------
    (("Hiatal hernia",), r"hiat(?:al|us)[\s-]+hernia|hernia[\s\w]{0,20}hiatus|(?:sliding|paraesophageal) hernia"),
    # --- mediastinum / nodes ----------------------------------------------------------------------
    # CT-RATE annotators mark any reported (present) lymph node, also sub-centimetric ones
    (
        ("Lymphadenopathy",),
        r"lymphadenopath\w*|adenopath\w*|lymphadenomegal\w*|lymph[\s-]*nodes?(?![\s-]+stations?)|lymph[\s-]*nodules?|lap\b",
    ),
    # --- lungs ------------------------------------------------------------------------------------
    (("Emphysema",), r"emphysema\w*|bullae|bullous|bullas?|blebs?"),
    (
        ("Bronchiectasis",),
        r"bronchiectas\w*|bronchiectatic|bronchial dilatations?|dilated bronch\w*|tractional bronch\w*",
    ),
    (
        ("Peribronchial thickening",),
        r"peribronch\w*(?:[\s\w-]{0,30}?(?:thicken\w*|thickness|cuffing|sheath))|(?:thicken\w*|thickness)[\s\w-]{0,40}?peribronch\w*",
    ),
    (
        ("Interlobular septal thickening",),
        r"(?:interlobular|interlobar|inter-?septal|intra-? and inter-?septal|septal)[\s,\w-]{0,25}?(?:thicken\w*|thickness|prominen\w*|clarification\w*)"
        r"|septal (?:thicken\w*|lines)|kerley|(?:thicken\w*|prominen\w*) (?:\w+ ){0,3}(?:in|of) the (?:\w+ )?(?:interlobular )?septa\b",
    ),
    (("Mosaic attenuation pattern",), r"mosaic\w*"),
    (("Pulmonary fibrotic sequela",), r"fibro[\s-]*atele\w*"),
    (("Atelectasis",), r"atelectas\w*|atelectatic|collapse|dystelectas\w*|subsegmental (?:linear )?atelectasis"),
    (("Consolidation",), r"consolidat\w*|air bronchogram\w*"),
    # densities qualified as sequelae / fibrotic are sequelae, not opacities (tried before "density increase")
    (
        ("Pulmonary fibrotic sequela",),
        r"(?:(?:pleuro-?parenchymal|pleural parenchymal|sequela\w*|fibrotic|band-like|reticular|linear)[\s-]+)*(?:pleuro-?parenchymal|sequela\w*|fibrotic|band-like)[\s-]+(?:\w+[\s-]+)?densit(?:y|ies)(?:[\s-]+increas\w*)?",
    ),
    # linear densities the same sentence calls sequelae / fibrotic ("linear densities consistent with
    # sequelae changes") are sequelae too, not opacities (tried before the opacity "linear density")
    (
        ("Pulmonary fibrotic sequela",),
        r"(?:(?:subpleural|pleuro-?parenchymal|mild|minimal|faint)[\s-]+)*linear[\s-]+(?:\w+[\s-]+)?(?:densit(?:y|ies)|increases? in density)(?:[\s-]+increas\w*)?"
        r"(?=[^.;]{0,80}?\b(?:sequela\w*|sequel|fibrot\w*|fibrosis)\b)",
    ),
    (
        ("Pulmonary fibrotic sequela",),
        r"fibrotic\w*|fibrosis|fibrous|sequelae?|sequel|(?:fibrotic|parenchymal|subpleural|linear|pleuroparenchymal) bands?|scar\w*",
    ),
    # a ground-glass nodule is a nodule, not an opacity (how the CT-RATE annotators label it)
    (("Lung nodule",), r"ground[\s-]*glass(?:[\s-]+(?:density|attenuation))?[\s-]+(?:micro)?nodul\w*"),
    (
        ("Lung nodule",),
        r"(?:micro)?nodules?|micronodul\w*|(?:micro)?nodular(?=[\s-]+(?:lesions?|formations?|appearances?|images?|structures?|foci|focus|opacit\w*|shadows?|or\b|and\b|mass))|granulomas?",
    ),
    (
        ("Lung opacity",),
        r"ground[\s-]*glass\w*|opacit\w*|(?:pneumonic |active |inflammatory |parenchymal |patchy )?infiltrat\w*|tree[\s-]in[\s-]bud|budding tree|(?:hazy|patchy) (?:densit\w*|areas?)"
        r"|(?:(?:linear|dependent|subpleural|consolidative|nodular|patchy|diffuse|focal|mild|minimal|faint)[\s-]+)+densit(?:y|ies)(?:[\s-]+increas\w*)?|consolidative densit\w*",
    ),
    # --- medical material -------------------------------------------------------------------------
    (
        ("Medical material",),
        r"catheters?|stents?|pacemakers?|pacemaker leads?|(?:defibrillator|icd)|prosthe\w*|(?:metallic )?sutures?(?: materials?)?|surgical (?:clips?|materials?|sutures?)|clips?"
        + r"|(?:endotracheal|tracheostomy|nasogastric|chest|drainage|feeding|thoracostomy) tubes?|tracheostomy|cannula\w*|port(?: catheter| chamber| system)?s?\b(?=[\s\w]{0,30}(?:catheter|chamber|observed|extend|located|seen|present))"
        + r"|drains?|drainage catheters?|sternotomy(?: wires?)?|wires?|(?:valve )?replacement|grafts?|coils?|embolization material|(?:pacemaker|icd|defibrillator|pacing) (?:leads?|electrodes?)|osteosynthesis|screws?|(?:metal(?:lic)?|fixation) plates?|cerclage|metallic (?:materials?|densit\w*|foreign bod\w*)|foreign bod\w*|filters?",
    ),
    # --- generic abnormal (anatomy abnormal flag) -------------------------------------------------
    (
        (GENERIC_ABNORMAL,),
        r"mass(?:es)?|lesions?|cysts?|cystic|tumou?r\w*|malignan\w*|metasta\w*|thicken\w*|dilat\w*|enlarg\w*|aneurysm\w*|ectasi\w*|"
        r"dissection|thromb\w*|embol\w*|stenos\w*|narrow\w*|calcif\w*|hernia\w*|pneumothorax|abscess\w*|edema\w*|oedema|inflammat\w*|"
        r"infect\w*|herniation|hypertroph\w*|hypodens\w*|hyperdens\w*|increased|decreased|widened|tortuous|elongat\w*|varic\w*|diverticul\w*",
    ),
)

# Location rules: a present mention whose text matches the first pattern and whose clause names the
# location of the second pattern also states the label (``calcified plaques in the aorta and coronary
# arteries`` -> arterial AND coronary wall calcification).
_CALCIFIC = r"calcif\w*|atherom\w*|atheroscl\w*|plaques?"
ARTERIAL_PLACE = (
    r"\baort(?:a|ic|as)\b(?! valve)|\barter(?:y|ies|ial)\b|\bvascular (?:structures?|walls?|system)|\bvessels?\b|\bcarotid|\bsubclavian|"
    r"\biliac|\bsupra-?aortic|\bbrachiocephalic|\bbranch(?:es)?\b|\bthoracoabdominal aorta"
)
LOCATION_RULES: tuple[tuple[str, str, str], ...] = (
    (
        _CALCIFIC,
        r"\bcoronar(?:y|ies)\b|\b(?:lad|lcx|rca)\b|left anterior descending|circumflex",
        "Coronary artery wall calcification",
    ),
    (_CALCIFIC, ARTERIAL_PLACE, "Arterial wall calcification"),
)
# a calcification placed only in the coronaries / a valve / the pleura is not an arterial wall
# calcification of the aorta and its branches (how the CT-RATE annotators used the two labels)
NOT_ARTERIAL_PLACE = (
    r"\bcoronar(?:y|ies)(?:\s+arter(?:y|ies))?|(?:left anterior descending|circumflex)(?:\s+coronary)?(?:\s+arter(?:y|ies))?|"
    r"\b(?:lad|lcx|rca)\b|\b(?:aortic |mitral )?valves?\b|\bpleura\w*|\blymph\w*(?: nodes?)?"
)

# Lung labels are not stated by a clause about another organ ("infiltration into the kidney", "increased
# density in the perirenal fat") unless the clause also names the lung.
EXTRAPULMONARY_CONTEXT = (
    r"\b(?:liver|hepat\w*|kidneys?|renal|perirenal|adrenal|spleen|splenic|pancrea\w*|bones?|osseous|vertebra\w*|sternum|scapula|"
    r"breasts?|thyroid|omental|omentum|fat(?:ty)? (?:planes?|tissues?)|bile|gallbladder|stomach|intestin\w*|bowel|abdominal|"
    r"subcutaneous|muscles?|axilla\w*|lymph|mediastin\w*|areola|mesenter\w*|colon|trachea\w*|goiter|soft tissue)\b"
)
PULMONARY_CONTEXT = r"\b(?:lungs?|(?:upper|middle|lower) lobes?|pulmonary|lingula\w*|subpleural|bronch\w*|fissures?|parenchyma of the lungs?)\b"
LUNG_LABELS: frozenset[str] = frozenset(
    {
        "Lung opacity",
        "Lung nodule",
        "Consolidation",
        "Atelectasis",
        "Pulmonary fibrotic sequela",
        "Emphysema",
        "Mosaic attenuation pattern",
        "Interlobular septal thickening",
        "Peribronchial thickening",
        "Bronchiectasis",
    }
)

# Word stems any lexicon entry can start with. The combined expression is only tried at tokens whose
# lower-case form starts with one of these (a full regex scan of every position costs ~10x more);
# tests/report_parsing/test_lexicon.py checks that this finds exactly what a full scan finds.
TRIGGER_STEMS: tuple[str, ...] = tuple(
    """
    pleur peric hemoperic effus fluid hydro hemo haemo thorax coronar calcif atherom atheroscl plaque lad lcx rca left
    circumflex cardiomeg heart cardiac cardio ctr enlarg increas wall mural vascular vessel intimal arterial aortic hiat inter intra prominen dependent consolidative nodular diffuse focal mild minimal faint band reticular
    hernia sliding paraesophageal lymph adenopath lap emphysem bull bleb bronchiect bronchial dilat tractional
    peribronch thicken thickness interlob septal kerley mosaic fibro atelect collapse dystelect subsegmental consolid air
    sequel parenchymal subpleural linear pleuroparenchymal scar nodul micronod granulom mass ground opacit pneumonic
    active inflammatory patchy infiltr tree budding hazy cathet stent pacemaker pacing defibrillator icd prosthe metal
    suture surgical clip endotracheal tracheostomy nasogastric chest drain feeding thoracostomy cannul port sternotom
    wire valve replacement graft coil embolization implant osteosynthesis screw fixation cerclage foreign filter lesion
    cyst tumo malignan metasta aneurysm ectasi dissection thromb embol stenos narrow pneumothorax abscess edema oedema
    inflammat infect herniation hypertroph hypodens hyperdens decreased widened tortuous elongat varic diverticul
    """.split()
)
