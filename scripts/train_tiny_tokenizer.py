"""Train the tiny CPU model's tokenizer (byte-level BPE, SMILES-aware) and write it to `assets/tokenizer/`.

The corpus is built only from files in this repository -- SMILES, IUPAC names and numbers from `data/`,
plus the chemistry vocabulary below -- so the result is identical on every machine:

    python scripts/train_tiny_tokenizer.py
"""

from __future__ import annotations

import csv
import pathlib

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "assets" / "tokenizer"
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<graph>"]
# GPT-2's pre-tokenization, except that a bracket atom ([C@@H], [nH+], [13CH3], and the chat marker [/INST])
# stays one piece and digits (ring closures, numbers) are split one by one.
PRE_TOKEN = Regex(r" ?\[[^\[\]\s]{1,16}\]|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}\[\]]+| ?[\[\]]|\s+(?!\S)|\s+")
CHAT_EXAMPLE = (
    "[INST] <<SYS>>\nThe following is a conversation between a curious human and AI assistant.\n<</SYS>>\n\n"
    "CCO<graph> Describe this molecule. [/INST] The molecule is a primary alcohol.</s><s>[INST] And its formula? [/INST] C2H6O</s>"
)

VOCABULARY = """
The molecule is a member of the class of compounds that is derived from obtained by formal condensation
substitution replacement of hydrogen hydrogens atom atoms group groups position positions It has role as
metabolite plant human animal bacterial fungal marine drug agent inhibitor antagonist agonist antibiotic
antioxidant antineoplastic anti-inflammatory antimicrobial solvent reagent toxin pigment hormone vitamin
conjugate acid base of an anion cation zwitterion tautomer enantiomer stereoisomer isomer functional parent
organic inorganic aromatic aliphatic cyclic acyclic heterocyclic polycyclic monocyclic bicyclic tricyclic ring
rings chain chains branched linear saturated unsaturated carbon nitrogen oxygen sulfur phosphorus halogen
fluorine chlorine bromine iodine boron silicon selenium sodium potassium calcium magnesium iron zinc copper
metal salt ester esters ether amide amine amino imine nitrile nitro ketone aldehyde alcohol phenol phenols
carboxylic carboxy carbonyl carboxamide sulfonamide sulfonic thiol thioether hydroxy hydroxyl methoxy ethoxy
methyl ethyl propyl butyl pentyl hexyl phenyl benzyl acetyl formyl oxo amino chloro bromo fluoro iodo cyano
alkene alkyne alkane arene benzene pyridine pyrimidine purine furan thiophene pyrrole imidazole indole
quinoline lactone lactam glycoside peptide protein nucleoside nucleotide steroid terpenoid flavonoid alkaloid
fatty lipid sugar carbohydrate monosaccharide disaccharide oligosaccharide polysaccharide glucose
molecular formula weight mass monoisotopic exact average heavy atom count hydrogen bond donor donors
acceptor acceptors rotatable bonds topological polar surface area logP partition coefficient charge net
formal stereocentre stereocentres chiral centre centres single double triple aromatic bond bonds
HOMO LUMO gap energy orbital highest occupied lowest unoccupied Hartree eV electronvolt value property
What is the Please describe this Describe Give provide Predict predict name IUPAC SMILES structure
molecule's molecules how many does have contain Which Is there any answer Answer yes no none one two three
four five six seven eight nine ten zero more than less following conversation between curious human and
AI assistant about chemistry chemical compound compounds feature features briefly short detailed
description summary identify list Count count number numbers its their this that these those with without
in on at by for from to into onto and or not also which contains containing consists consisting bearing
carrying substituted substituent substituents attached linked fused bridged spiro
""".split()

SENTENCES = [
    "The molecule is a carboxylic acid.",
    "The molecule contains an aromatic ring and a hydroxy group.",
    "It has 2 hydrogen bond donors and 3 hydrogen bond acceptors.",
    "The HOMO energy is -0.2534 Hartree.",
    "What is the IUPAC name of this molecule?",
    "Please describe this molecule.",
    "The molecular weight is 180.16 g/mol.",
]


def corpus() -> list[str]:
    lines: list[str] = []
    for name, columns in (
        ("chebi20_smiles.tsv", ("smiles",)),
        ("pubchem_iupac_train.tsv", ("smiles", "iupac_name")),
        ("qm9_homo_lumo_gap.tsv", ("smiles", "homo", "lumo", "gap")),
        ("moleculenet_smiles.tsv", ("smiles",)),
    ):
        with (ROOT / "data" / name).open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                lines.extend(row[column] for column in columns)
    lines.extend(" ".join(VOCABULARY[i : i + 12]) for i in range(0, len(VOCABULARY), 12))
    lines.extend(SENTENCES * 20)
    lines.extend([CHAT_EXAMPLE] * 50)
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(PRE_TOKEN, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Like Llama's tokenizers: BOS in front of every encoded text (chat templates write it themselves).
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<graph>"]})
    return fast


if __name__ == "__main__":
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(OUTPUT)
    print(f"saved a {len(tokenizer)}-token tokenizer to {OUTPUT.relative_to(ROOT)}")
