#!/usr/bin/env bash
# The HH-RLHF preference table of the README (issue 17), in miniature: SFT on
# the HH-RLHF train subsets, a reward model from it, then DPO (sigmoid, ipo,
# hinge) and SimPO from the SFT run, each scored once on the reserved
# helpful-online subset (data.heldout_subsets: never trained or tuned on) and
# judged by the reward model (win rate over the SFT policy's greedy answers).
# Run folders under runs/preference/. Usage (from the repository root):
#   bash scripts/preference_figures.sh [names...]
# Names: sft reward dpo_sigmoid dpo_ipo dpo_hinge simpo reward_helpful
# (reward_helpful: the reward model on the two helpful train subsets only, not in the default list)
set -euo pipefail
OUT=${OUT:-runs/preference}
SHARED=${SHARED:-../shared/data}
mkdir -p "$OUT"
HH=(--set data.dataset=hh_rlhf --set "data.shared_dir=$SHARED" --set model.sequence_length=256)
FINAL=(--set data.heldout_subsets=helpful-online)
# JUDGE=0 leaves the win rate out (the runs then need no reward run).
PREF=(--init "$OUT/sft" "${HH[@]}" "${FINAL[@]}" --set training.steps=300
      --set training.learning_rate=1e-4 --set training.saved_model=false)
if [ "${JUDGE:-1}" != 0 ]; then PREF+=(--set "preference.judge=$OUT/reward"); fi
run() { local name=$1; shift; echo "== $name: kobjectives train $*"; \
  kobjectives train "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; \
  tail -n 4 "$OUT/$name.log"; }
for name in "${@:-sft reward dpo_sigmoid dpo_ipo dpo_hinge simpo}"; do
  for n in $name; do case $n in
    sft) run $n sft "${HH[@]}" --set sft.overlong=truncate --set training.steps=2000 \
      --set training.saved_model=false ;;
    # The judge keeps its SavedModel (the DPO runs score answers with it).
    reward) run $n reward --init "$OUT/sft" "${HH[@]}" "${FINAL[@]}" --set training.steps=600 ;;
    reward_helpful) run $n reward --init "$OUT/sft" "${HH[@]}" "${FINAL[@]}" \
      --set data.hh_rlhf_subsets=helpful-base,helpful-rejection-sampled --set training.steps=600 \
      --set training.saved_model=false ;;
    dpo_sigmoid) run $n dpo "${PREF[@]}" --set preference.loss_type=sigmoid ;;
    dpo_ipo) run $n dpo "${PREF[@]}" --set preference.loss_type=ipo ;;
    dpo_hinge) run $n dpo "${PREF[@]}" --set preference.loss_type=hinge ;;
    simpo) run $n dpo "${PREF[@]}" --set preference.method=simpo ;;
    *) echo "unknown figure $n"; exit 2 ;;
  esac; done
done
