from mixlm.encoders.config import EncodingConfig
from mixlm.schemas.beir import Document, read_corpus


def test_one_rendering_of_title_and_text_shared_with_the_encoder():
    doc = Document("d1", "A title", "Some text.")
    assert doc.full_text() == "A title\nSome text." == EncodingConfig().format_item(doc.title, doc.text)
    template = "<{title}> {text}"
    assert doc.full_text(template) == "<A title> Some text." == EncodingConfig(item_template=template).format_item(
        doc.title, doc.text)


def test_read_corpus_reads_the_shipped_collection():
    docs = list(read_corpus("data/adi", limit=3))
    assert len(docs) == 3 and all(isinstance(d, Document) and d.doc_id for d in docs)
