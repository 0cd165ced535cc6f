"""Shared array aliases used across layers."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

FloatVector: TypeAlias = npt.NDArray[np.float64]
FloatMatrix: TypeAlias = npt.NDArray[np.float64]
IntVector: TypeAlias = npt.NDArray[np.intp]
BoolMatrix: TypeAlias = npt.NDArray[np.bool_]
#: Query features: a dense ``(n, d)`` array or a CSR matrix, rows L2-normalised by encoders.
Features: TypeAlias = npt.NDArray[np.float32] | npt.NDArray[np.float64] | sp.csr_matrix
