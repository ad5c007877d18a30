"""Pure tensor math: the one source of truth for every formula."""

from kobjectives.ops.masked_lm import correct_predictions
from kobjectives.ops.masked_lm import masked_lm_loss
from kobjectives.ops.masked_lm import sparse_cross_entropy
from kobjectives.ops.reduction import apply_weights  # noqa: F401
from kobjectives.ops.reduction import cross_replica_sum
from kobjectives.ops.reduction import global_weighted_mean
from kobjectives.ops.labels import check_labels  # noqa: F401
from kobjectives.ops.labels import poison_invalid_labels  # noqa: F401
from kobjectives.ops.contrastive import contrastive_margin_loss  # noqa: F401
from kobjectives.ops.contrastive import cosent_loss  # noqa: F401
from kobjectives.ops.contrastive import cross_replica_concat  # noqa: F401
from kobjectives.ops.contrastive import info_nce  # noqa: F401
from kobjectives.ops.contrastive import l2_normalize  # noqa: F401
from kobjectives.ops.contrastive import pair_distance  # noqa: F401
from kobjectives.ops.contrastive import triplet_margin_loss  # noqa: F401
from kobjectives.ops.masking import apply_replacements  # noqa: F401
from kobjectives.ops.masking import chunk_keys  # noqa: F401
from kobjectives.ops.masking import compact_positions  # noqa: F401
from kobjectives.ops.masking import geometric_tile_starts  # noqa: F401
from kobjectives.ops.masking import id_ranges  # noqa: F401
from kobjectives.ops.masking import ids_in  # noqa: F401
from kobjectives.ops.masking import kth_largest  # noqa: F401
from kobjectives.ops.masking import mask_tokens  # noqa: F401
from kobjectives.ops.masking import position_scores  # noqa: F401
from kobjectives.ops.masking import sample_replacement_ids  # noqa: F401
from kobjectives.ops.masking import selectable_mask  # noqa: F401
from kobjectives.ops.masking import stochastic_budget  # noqa: F401
from kobjectives.ops.masking import truncated_geometric_lengths  # noqa: F401
from kobjectives.ops.masking import whole_chunk_selection  # noqa: F401
from kobjectives.ops.masking import word_starts  # noqa: F401
from kobjectives.ops.cpc import cpc_info_nce  # noqa: F401
from kobjectives.ops.cpc import cpc_loss  # noqa: F401
from kobjectives.ops.cpc import mean_over_offsets  # noqa: F401
from kobjectives.ops.augmentation import augment_tokens  # noqa: F401
from kobjectives.ops.augmentation import random_deletion  # noqa: F401
from kobjectives.ops.augmentation import random_insertion  # noqa: F401
from kobjectives.ops.augmentation import random_replacement  # noqa: F401
from kobjectives.ops.augmentation import random_swap  # noqa: F401
from kobjectives.ops.embedding_metrics import alignment  # noqa: F401
from kobjectives.ops.embedding_metrics import average_ranks  # noqa: F401
from kobjectives.ops.embedding_metrics import cosine_similarity  # noqa: F401
from kobjectives.ops.embedding_metrics import pool_sequence  # noqa: F401
from kobjectives.ops.embedding_metrics import recall_at_k  # noqa: F401
from kobjectives.ops.embedding_metrics import spearman  # noqa: F401
from kobjectives.ops.embedding_metrics import uniformity  # noqa: F401
from kobjectives.ops.span_corruption import merge_span_corruption  # noqa: F401
from kobjectives.ops.span_corruption import noise_span_counts  # noqa: F401
from kobjectives.ops.span_corruption import random_segmentation  # noqa: F401
from kobjectives.ops.span_corruption import random_spans_noise_mask  # noqa: F401
from kobjectives.ops.span_corruption import raw_length_for_inputs_length  # noqa: F401
from kobjectives.ops.span_corruption import span_corruption  # noqa: F401
from kobjectives.ops.span_corruption import span_corruption_lengths  # noqa: F401
from kobjectives.ops.causal_lm import causal_lm_targets  # noqa: F401
from kobjectives.ops.chunked_cross_entropy import chunked_cross_entropy  # noqa: F401
from kobjectives.ops.chunked_cross_entropy import chunked_token_cross_entropy  # noqa: F401
from kobjectives.ops.sentence_pairs import sample_sentence_pairs  # noqa: F401
from kobjectives.ops.sentence_pairs import truncated_pair_lengths  # noqa: F401
from kobjectives.ops.sentence_pairs import pair_classification_loss  # noqa: F401
from kobjectives.ops.replaced_token_detection import corrupt_tokens  # noqa: F401
from kobjectives.ops.replaced_token_detection import gumbel_max_sample  # noqa: F401
from kobjectives.ops.replaced_token_detection import gumbel_noise  # noqa: F401
from kobjectives.ops.replaced_token_detection import replica_gumbel_noise  # noqa: F401
from kobjectives.ops.replaced_token_detection import rtd_confusion  # noqa: F401
from kobjectives.ops.replaced_token_detection import rtd_loss  # noqa: F401
from kobjectives.ops.replaced_token_detection import scatter_at_positions  # noqa: F401
from kobjectives.ops.replaced_token_detection import sigmoid_cross_entropy  # noqa: F401
from kobjectives.ops import permutation_lm  # noqa: F401
from kobjectives.ops.permutation_lm import permutation_lm_inputs  # noqa: F401
from kobjectives.ops.permutation_lm import two_stream_attention_masks  # noqa: F401
from kobjectives.ops.bart_noising import bart_noise  # noqa: F401
from kobjectives.ops.causal_lm import document_causal_mask  # noqa: F401
from kobjectives.ops.causal_lm import document_positions  # noqa: F401
