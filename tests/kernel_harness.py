"""What CuPy's ElementwiseKernel makes of a kernel's parameters, for the compile and host-execution checks."""


def elementwise_signature(name, src):
    """``(parameters, bindings)`` of a ``KernelSource`` as ElementwiseKernel binds them.

    ``raw`` parameters are plain pointers indexed by hand; every other parameter
    is a pointer ``_raw_NAME`` with a reference ``NAME`` bound to element ``i``.
    Inputs are const. ``bindings`` is the C++ that goes at the top of the loop body.
    """
    params, bindings = [], []
    for pname, typ, raw, is_output in src.parameters():
        const = "" if is_output else "const "
        if typ == "int32":
            params.append(f"const int {pname}")
        elif typ != "T":
            raise AssertionError(f"{name}: the harness knows only T and int32 parameters, not {typ}")
        elif raw:
            params.append(f"{const}T* {pname}")
        else:
            params.append(f"{const}T* _raw_{pname}")
            bindings.append(f"{const}T &{pname} = _raw_{pname}[i];")
    params.append("const ptrdiff_t _n")
    return params, "\n        ".join(bindings)
