# The two commands in the README are the contract: `make train` and `make test`
# work on a fresh machine with Python 3.11 and nothing else installed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: train test install bench demos plots fig4 table4 table4-va fig8 agreement fig6 animation report mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,sumo]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m reled_jax.train --resume

# One worker per core: most tests are single-threaded JAX compilation; worksteal lets an idle worker take
# queued tests from the busy one, so the run does not end on one core while the other waits.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=15

bench: $(STAMP)
	$(BIN)/python -m benchmarks.env_throughput

demos: $(STAMP)
	$(BIN)/python -m benchmarks.llm_demos

plots: $(STAMP)
	$(BIN)/python -m sim.plot_networks

# The paper's experiments (Section V) at the budget that fits a 2-core CPU; BUDGET=paper for full scale.
BUDGET ?= small
SEEDS  ?= 5

fig4: $(STAMP)
	$(BIN)/python -m benchmarks.sweep --experiment fig4 --budget $(BUDGET) --seeds $(SEEDS)

table4: $(STAMP)
	$(BIN)/python -m benchmarks.sweep --experiment table4 --budget $(BUDGET) --seeds $(SEEDS)

table4-va: $(STAMP)  # the same ablations on RELED-Va (our variant of the expert advantage)
	$(BIN)/python -m benchmarks.sweep --experiment table4-va --budget $(BUDGET) --seeds $(SEEDS)

fig8: $(STAMP)
	$(BIN)/python -m benchmarks.sweep --experiment fig8 --budget $(BUDGET) --seeds $(SEEDS)

agreement: $(STAMP)  # after fig4/table4: how closely each method's agents follow the expert
	$(BIN)/python -m benchmarks.expert_agreement --budget $(BUDGET) --seeds $(SEEDS) --scenario hongkong --regime moderate
	$(BIN)/python -m benchmarks.expert_agreement --budget $(BUDGET) --seeds $(SEEDS) --scenario grid --regime moderate

# Fig. 6 (expert and agents' traffic flow on the map) and one episode's animation, from make train's run
# (trained first where it is not there yet; --resume finishes or re-reports it).
TRAIN_RUN := runs/hongkong-moderate-reled-s0
$(TRAIN_RUN)/checkpoint.npz: | $(STAMP)
	$(BIN)/python -m reled_jax.train --resume --test-episodes 0

fig6: $(TRAIN_RUN)/checkpoint.npz
	$(BIN)/python -m benchmarks.flow_map --checkpoint $(TRAIN_RUN)/checkpoint.npz

animation: $(TRAIN_RUN)/checkpoint.npz
	$(BIN)/python -m sim.render --checkpoint $(TRAIN_RUN)/checkpoint.npz --out benchmarks/results/episode_hongkong-moderate_reled.gif --every 20
	$(BIN)/python -m sim.render --scenario hongkong --regime moderate --policy shortest --out benchmarks/results/episode_hongkong-moderate_shortest.gif --every 20

report: $(STAMP)
	$(BIN)/python -m benchmarks.report

# Which one-line bugs in the method's code the tests catch (all mutants: hours on 2 cores; SAMPLE=100 SEED=1: a
# seeded random 100 per module, about an hour; MODULES="llm/client.py ..." for some).
MUT_STAMP := $(VENV)/.installed-mutation
$(MUT_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,sumo,mutation]"
	touch $(MUT_STAMP)

mutation: $(MUT_STAMP)
	$(BIN)/python -m benchmarks.mutation $(if $(MODULES),--modules $(MODULES)) $(if $(SAMPLE),--sample $(SAMPLE)) $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(VENV) .pytest_cache mutants
