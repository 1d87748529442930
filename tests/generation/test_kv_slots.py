"""The slot cache's column layout on hand-made one-number keys: where rows enter, step, leave and move."""
import torch

from grace.generation.kv_slots import SlotCache

T, F = True, False


def cache(slots=2, capacity=8, prefix=(10.0, 11.0)):
    """One layer, one KV head of width 1, so a key is a number we can follow through the buffer."""
    c = SlotCache(num_layers=1, slots=slots, capacity=capacity)
    c.allocate(kv_heads=1, head_dim=1, dtype=torch.float32, device=torch.device("cpu"))
    c.reset_layout()
    keys = torch.tensor(prefix).view(1, 1, -1, 1)
    c.write_prefix([(keys, keys + 100)])
    return c


def keys(c):
    return c.layers[0].keys[:, 0, :, 0]  # [S, C]


def write(c, values):
    """What a decoder layer does with the window ``open_rows`` / ``open_step`` set: returns the keys it sees."""
    new = torch.tensor(values, dtype=torch.float32).view(len(values), 1, -1, 1)
    seen, _ = c.layers[0].update(new, new + 100, 0)
    return seen[:, 0, :, 0]


def enter(c, slot, values, tail_mask):
    """A prompt pass of one tail: it sees the prefix and itself, whatever the body holds."""
    c.make_room(len(tail_mask), 1)
    mask = c.open_rows(torch.tensor([slot]), torch.tensor([tail_mask]))
    assert c.layers[0].get_seq_length() == c.prefix_length  # the queries follow the prefix
    assert c.layers[0].get_mask_sizes(len(tail_mask)) == (c.prefix_length + len(tail_mask), 0)
    assert mask.tolist() == [[T] * c.prefix_length + list(tail_mask)]
    return write(c, [values])


def test_the_prefix_is_in_every_slot():
    c = cache()
    assert c.cursor == c.prefix_length == 2
    assert keys(c)[:, :2].tolist() == [[10, 11], [10, 11]]
    assert c.layers[0].values[:, 0, :2, 0].tolist() == [[110, 111], [110, 111]]


def test_a_tail_enters_right_aligned_and_sees_the_prefix():
    c = cache()
    seen = enter(c, 1, [0, 1, 2], [F, T, T])  # left-padded tail of two tokens
    assert c.cursor == 5
    assert seen.tolist() == [[10, 11, 0, 1, 2]]
    assert keys(c)[1, :5].tolist() == [10, 11, 0, 1, 2] and keys(c)[0, 2:5].tolist() == [0, 0, 0]


def test_a_step_appends_one_column_to_every_slot():
    c = cache()
    enter(c, 0, [1, 2], [T, T])
    enter(c, 1, [3], [T])  # narrower: right-aligned at the same cursor
    assert c.mask[:, :4].tolist() == [[T, T, T, T], [T, T, F, T]]
    mask = c.open_step()
    assert mask.shape == (2, 5) and mask[:, 4].tolist() == [T, T]
    assert c.layers[0].get_mask_sizes(1) == (5, 0)
    assert write(c, [7, 8]).tolist() == [[10, 11, 1, 2, 7], [10, 11, 0, 3, 8]]
    c.close_step(torch.tensor([T, F]))  # slot 1 was free: its column is not kept attended
    assert c.cursor == 5 and c.mask[:, 4].tolist() == [T, F]


def test_a_wider_tail_moves_the_cursor_and_leaves_a_masked_gap_for_the_others():
    c = cache(capacity=12)
    enter(c, 0, [1], [T])
    assert enter(c, 1, [4, 5, 6], [T, T, T]).tolist() == [[10, 11, 4, 5, 6]]
    assert c.cursor == 5
    assert c.mask[:, :5].tolist() == [[T, T, T, F, F], [T, T, T, T, T]]


def test_release_masks_the_body_but_keeps_the_prefix():
    c = cache()
    enter(c, 0, [1, 2], [T, T])
    c.release(torch.tensor([0]))
    assert c.mask[0, :4].tolist() == [T, T, F, F]


def test_compaction_drops_leading_columns_no_slot_uses():
    c = cache(capacity=8)
    enter(c, 0, [1, 2], [T, T])  # columns 2, 3
    for token in (5, 6):  # columns 4, 5
        c.open_step()
        write(c, [token, 0])
        c.close_step(torch.tensor([T, F]))
    enter(c, 1, [3], [T])  # column 5 for slot 1
    c.release(torch.tensor([0]))  # slot 0's columns 2-5 are dead; slot 1 keeps column 5
    c.compact()
    assert c.cursor == 3
    assert keys(c)[1, :3].tolist() == [10, 11, 3]
    assert c.mask[:, :3].tolist() == [[T, T, F], [T, T, T]]
    assert not c.mask[:, 3:].any()


def test_a_full_cache_compacts_before_it_grows():
    c = cache(capacity=6)
    enter(c, 0, [1, 2], [T, T])  # cursor 4
    c.release(torch.tensor([0]))
    enter(c, 1, [3, 4, 5], [T, T, T])  # needs 2 + 3 + 1 columns: fits once slot 0's are dropped
    assert c.capacity == 6 and c.cursor == 5
    assert keys(c)[1, :5].tolist() == [10, 11, 3, 4, 5]


def test_growing_keeps_what_is_there():
    c = cache(capacity=5)
    enter(c, 0, [1, 2], [T, T])
    enter(c, 1, [3, 4, 5], [T, T, T])  # slot 0 is busy: nothing to drop, the cache grows
    assert c.capacity >= 6
    assert keys(c)[:, :5].tolist() == [[10, 11, 1, 2, 0], [10, 11, 3, 4, 5]]
    assert c.mask[:, :5].tolist() == [[T, T, T, T, F], [T, T, T, T, T]]  # a masked gap for slot 0


def test_copy_rows_and_select():
    c = cache(slots=3)
    enter(c, 0, [1, 2], [F, T])
    c.copy_rows(torch.tensor([0]), torch.tensor([2]), width=2)
    assert keys(c)[2, :4].tolist() == [10, 11, 1, 2] and c.mask[2, :4].tolist() == [T, T, F, T]
    c.select(torch.tensor([2, 0]))
    assert c.slots == 2 and keys(c)[:, :4].tolist() == [[10, 11, 1, 2], [10, 11, 1, 2]]


def test_a_prompt_pass_sees_only_the_prefix_and_itself_in_a_wide_body():
    c = cache(capacity=16)
    enter(c, 0, [1, 2, 3, 4, 5], [T, T, T, T, T])  # a long row: body 5 wide
    assert enter(c, 1, [7], [T]).tolist() == [[10, 11, 7]]
    assert keys(c)[1, :7].tolist() == [10, 11, 0, 0, 0, 0, 7]  # stored right-aligned at the cursor
    assert c.mask[1, :7].tolist() == [T, T, F, F, F, F, T]


def test_dead_columns_are_dropped_before_they_cost_a_fifth_of_a_step():
    c = cache(capacity=64)
    enter(c, 0, list(range(20)), [T] * 20)  # 20 columns
    enter(c, 1, [7], [T])  # at column 21 (the cursor's last)
    c.release(torch.tensor([0]))  # 19 dead columns before slot 1's
    enter(c, 0, [8], [T])  # the next entry compacts: 19 dead >= 16, and more than a quarter of the body
    assert c.cursor == 3 and keys(c)[:, :3].tolist() == [[10, 11, 8], [10, 11, 7]]
