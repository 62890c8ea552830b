"""Test oracle of the packer: `unpack` turns a packed sequence back into its episode, so that
tests can check that `Packer.pack` loses nothing."""

from unicl.packer import BOI, BOT, EOC, PAD
from unicl.tasks.prompt import Episode, Segment
from unicl.vocab import SPECIAL_SPAN


def unpack(packer, packed, decode_images: bool = False) -> Episode:
    """Tokens -> the episode they encode (the inverse of `Packer.pack`, up to segmentation).

    Layout tags and padding are dropped; consecutive tokens of one span and role
    become one segment (so two adjacent text segments come back as one, except at
    the generation start, which is kept as a segment boundary). Segments carry
    their local `ids`; text and numbers are decoded, images only if
    `decode_images` (it runs the image decoder).
    """
    ids = packed.input_ids.tolist()
    attrs = packed.attributes.tolist()
    bounds = [*packed.pair_starts, len(ids)]
    cut = packed.prefix_length

    def segments(start: int, stop: int) -> list[Segment]:
        out: list[Segment] = []
        t = start
        while t < stop:
            token = ids[t]
            _, span, role = packer.table.describe(attrs[t])
            if span == SPECIAL_SPAN:
                name = packer.vocab.id_to_token[token]
                if name not in (BOI, BOT, EOC, PAD):
                    out.append(Segment(SPECIAL_SPAN, name, role))
                t += 1
                continue
            end = t + 1
            # the attribute encodes span and role: equal attributes = one segment
            while end < stop and end != cut and attrs[end] == attrs[t]:
                end += 1
            local = packer.vocab.to_local(span, ids[t:end])
            payload = None
            if span not in packer._image_spans or decode_images:
                payload = packer.vocab.tokenizers[span].decode(local)
            out.append(Segment(span, payload, role, ids=local))
            t = end
        return out

    pairs = [segments(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    query_offsets = []
    t = bounds[-2]
    for segment in pairs[-1]:
        while packer.vocab.id_to_token.get(ids[t]) in (BOI, BOT):
            t += 1
        query_offsets.append(t)
        t += 1 if segment.modality == SPECIAL_SPAN else len(segment.ids)
    return Episode(
        task=packed.task,
        category=packed.category,
        pairs=pairs,
        prefix=segments(0, bounds[0]),
        meta=dict(packed.meta),
        pad_pairs=packed.pad_id in ids[bounds[0] :],
        generate_from=query_offsets.index(cut) if cut in query_offsets else None,
    )
