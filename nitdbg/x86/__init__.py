"""The x86 architecture layer: registers, memory and paging, decode, instruction semantics,
exception and interrupt delivery, debug facilities. Knows nothing of SVM, bhyve or any UI."""
