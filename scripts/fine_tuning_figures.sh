#!/usr/bin/env bash
# The held-out figures of the fine-tuning rows of the README (issue 16), each a
# default recipe with the named data; run folders under runs/figures/.
# Usage (from the repository root): bash scripts/fine_tuning_figures.sh [names...]
# Names: classify_corpus classify_corpus_mean tag_corpus tag_corpus_crf sft_corpus sft_all_tokens mlm_sst2 sst2_scratch
#        sst2_pretrained conll conll_crf cluener cluener_crf chnsenticorp seq2seq_corpus
#        seq2seq_corpus_packed (seq2seq.packing = true; not in the default list)
# Reserved splits are never read: SST-2 and ChnSentiCorp score on dev, CoNLL on
# dev.txt, CLUENER2020 on a slice held out from train.txt (its dev.txt is reserved).
set -euo pipefail
OUT=${OUT:-runs/figures}
SHARED=${SHARED:-../shared/data}
mkdir -p "$OUT"
# No SavedModel: these runs are for their metrics (kobjectives export writes it later).
COMMON=(--set training.saved_model=false)
run() { local name=$1; shift; echo "== $name: kobjectives train $*"; \
  kobjectives train "$@" "${COMMON[@]}" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; \
  tail -n 4 "$OUT/$name.log"; }
mlm_text() {  # SST-2 train sentences (no labels) and WikiText-2 valid.txt
  tail -n +2 "$SHARED/sst2/train.tsv" | cut -f2 > "$OUT/sst2_train_sentences.txt"
  echo "$OUT/sst2_train_sentences.txt,$SHARED/wikitext2/valid.txt"
}
for name in "${@:-classify_corpus classify_corpus_mean tag_corpus tag_corpus_crf sft_corpus sft_all_tokens mlm_sst2 sst2_scratch sst2_pretrained conll conll_crf cluener cluener_crf chnsenticorp seq2seq_corpus}"; do
  for n in $name; do case $n in
    classify_corpus) run $n classify ;;
    classify_corpus_mean) run $n classify --set classifier.pooling=mean ;;
    tag_corpus) run $n tag ;;
    tag_corpus_crf) run $n tag --set tagging.use_crf=true ;;
    sft_corpus) run $n sft ;;
    sft_all_tokens) run $n sft --set sft.loss_on=all ;;
    mlm_sst2) run $n mlm --set "data.files=$(mlm_text)" ;;
    # The mlm recipe's windows are 64 tokens: both SST-2 runs use 64.
    sst2_scratch) run $n classify --set data.dataset=sst2 --set model.sequence_length=64 ;;
    sst2_pretrained) run $n classify --set data.dataset=sst2 --set model.sequence_length=64 \
      --init "$OUT/mlm_sst2" ;;
    conll) run $n tag --set data.dataset=conll2003 --set tagging.use_crf=false ;;
    conll_crf) run $n tag --set data.dataset=conll2003 --set tagging.use_crf=true ;;
    cluener) run $n tag --set data.dataset=cluener2020 --set tagging.use_crf=false ;;
    cluener_crf) run $n tag --set data.dataset=cluener2020 --set tagging.use_crf=true ;;
    chnsenticorp) run $n classify --set data.dataset=chnsenticorp ;;
    seq2seq_corpus) run $n seq2seq_sft ;;
    seq2seq_corpus_packed) run $n seq2seq_sft --set seq2seq.packing=true ;;
    *) echo "unknown figure $n"; exit 2 ;;
  esac; done
done
