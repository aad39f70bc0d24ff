import numpy as np

from online_models.forecast_queue import ForecastQueue


def put(queue: ForecastQueue, rows: list[int], value: float, version: int = 1) -> None:
    queue.put(np.array(rows), np.full((len(rows), 2), value), version, at_ms=version)


def test_rows_are_taken_in_the_order_queued_across_points_and_a_bounded_number_at_a_time():
    queue = ForecastQueue(capacity=16, targets=2)
    put(queue, [4, 2, 9], 1.0)
    put(queue, [7, 2, 1], 2.0, version=2)  # 2 keeps its place, with the newer forecast
    assert len(queue) == 5
    taken = [queue.take(2) for _ in range(3)]
    assert [t[0].tolist() for t in taken] == [[4, 2], [9, 7], [1]]
    assert taken[0][1][:, 0].tolist() == [1.0, 2.0] and taken[0][2].tolist() == [1, 2]
    assert len(queue) == 0 and len(queue.take(5)[0]) == 0


def test_a_dropped_row_is_not_taken_and_queued_again_it_waits_at_the_back():
    queue = ForecastQueue(capacity=16, targets=2)
    put(queue, [3, 5, 6], 1.0)
    queue.drop(np.array([5, 8]))  # 8 was never queued
    assert len(queue) == 2
    put(queue, [5], 3.0, version=2)
    rows, values, _, _ = queue.take(10)
    assert rows.tolist() == [3, 6, 5] and values[2].tolist() == [3.0, 3.0]
    put(queue, [1], 1.0)
    queue.clear()
    assert len(queue) == 0 and queue.take(10)[0].tolist() == []
