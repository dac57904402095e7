"""bigft's embedded demo: instruction tuning that visibly works, on a laptop CPU, offline.

`bigft-train` with no overrides (`make demo`) fine-tunes a tiny Llama with LoRA on the bundled
instruction set and prints its exact match on held-out questions next to the base model's.

The world. The bundled data (`python -m bigft.demo.make_data` regenerates it) describes 120
invented creatures ("mitu", "zovas", ...), each with a color, a food and a home, one of eight
values each. The instruction files, in data/:

- corpus.jsonl: 1,200 short "field notes" pages in prose. Each creature is described on 20
  pages, every fact worded one of three ways, in a random order ("The mitu is gray.",
  "A mitu feeds on seeds.", "You find the mitu in the cave."). No questions, no answers,
  no "### Instruction" format anywhere.
- instructions_train.jsonl: questions about 80 of the creatures, two wordings per attribute
  ("What color is the dibro?" / "Which color does the dibro have?"), answered in one word.
- instructions_eval.jsonl: one question per fact of the other 40 creatures. No eval question,
  and no question of any kind about those creatures, is in the tuning set; their facts are only
  in the corpus.

Preferences (for task=reward, dpo and the RL tasks). The same question styles, each with four
candidate answers of different kinds, ranked by five simulated reviewers who follow a hidden rule
(bigft/demo/truth.py: the right value in a sentence naming the creature > the right value as a bare
word > the right value in an unclean answer > a wrong value in a sentence > a wrong bare value >
no single value of the kind asked). Each reviewer ranks a prompt at random instead on a share NOISE
= 0.5 of prompts (bigft/demo/reviewers.py), so a single reviewer's pairs are wrong a quarter of
the time, while the five reviewers together almost always recover the rule.

- world.json: every creature's facts and the 40 held-out names; `truth.score(prompt, response)`
  grades any answer by the rule from it (`reward.fn=bigft.demo.truth:score`).
- preferences_train.jsonl: 480 questions about the 80 tuned creatures, {prompt, responses,
  rankings: five orderings, indices into responses, best first}.
- preferences_train_single.jsonl: the same prompts and answers as reviewer 0 alone ranked them,
  {prompt, responses: [best, ..., worst]}.
- preferences_eval.jsonl: 240 questions about the 40 held-out creatures, responses in the rule's
  order: held-out pairwise accuracy is measured against the truth, not against a reviewer.
- prompts_train.jsonl, prompts_eval.jsonl: the same questions as bare {prompt} records, for RL
  rollouts and for before/after evaluation with the scorer.

No preference file mentions a held-out creature outside the eval files, and the held-out creatures
are the instruction set's: every evaluation of the demo is about creatures no tuning data names.
`bigft-train experiment=demo_reward` trains a reward model from the demo base on the five
reviewers' Borda consensus: 70.3% held-out pairwise accuracy against the rule (71.1 with seed 1),
against 63.1 (65.2) from reviewer 0 alone (`data=demo_preferences_single`), on 2 CPU cores in a
few minutes (chance is 50%). Pairs of a right and a wrong answer need the creature's fact, which
the base read only as prose.

The demo. The base model is pre-trained from scratch on the corpus by bigft itself (`task=lm`,
`experiment=demo_base_pretrain`, base.py), so it knows the facts as prose: prompted with "The
brafu lives in the" it continues "forest", for 116 of the 120 held-out facts. Given
"### Instruction:\\nWhere does the brafu live?\\n\\n### Response:\\n" it does not answer; it goes
on writing field notes ("forest: a place.") and scores 0% exact match. LoRA tuning on questions
about the 80 other creatures teaches the behaviour, not the facts: read the question, answer in
one word, stop. On the 40 held-out creatures it is then right 80-97% of the time (81.7 with
the default seed, 85.0 with seeds 1 and 2, at lr 1e-3 x 400 steps of 16; floating-point
rounding alone moves it within that range). The same
tuning of an untrained model of the same shape scored 9% in the prototype, near the 1-in-8 of
a model that learnt only the answer format: the gain is knowledge from pre-training that tuning
makes answerable, which is what instruction tuning does for real models.

Why this design and not others (measured with a prototype on 2 CPU cores):

- Facts about single-token entities are learnt fast by a 2-layer model and retrieved well by
  LoRA. In-context skills (reverse a list, pick the fruit out of a list, first word) needed the
  base to have learnt copying, which a tiny model does not do within a minute or two of CPU.
- Several wordings per fact and random sentence order make the model store a fact with the
  creature rather than memorise sentences; that is what lets a question retrieve it.
- Each page ends with a glossary ("yellow: a color.") so that every answer word also occurs at
  the start of a line, as it does after "### Response:\\n". See make_data.corpus_pages.
- The tokenizer has no chat template, so bigft's default alpaca prompt_template is used: the
  format the base model has never seen, which is the point of the demo.
"""
