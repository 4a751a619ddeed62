"""The matrix: one test per (model, pruner, workflow, precision, batch size) case.

Select slices with -k on any axis token: ``pytest benchmarks -k "ort and int8"``.
"""


def test_inference(pq_case, pq_engine, pq_data, pq_accuracy, pq_timer, pq_assert_floor,
                   benchmark):
    batch = pq_data.batch(pq_case.batch_size)
    pq_timer(benchmark, pq_engine, batch)  # warm-up, rounds, memory; every metric -> extra_info
    pq_assert_floor(pq_case, pq_accuracy)  # after timing, so a failing case still has figures
