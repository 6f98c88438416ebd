"""The PACS side: study facts over QIDO-RS, and the DICOMweb proxy behind study links."""
