"""The contract every missingness simulator fulfils.

Shape legend: B batch, T_m steps of modality m.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import ClassVar

import torch


class BaseMissingness(abc.ABC):
    """Decides which positions of each modality one incomplete view keeps.

    A simulator turns validity masks and per-sample, per-modality missing rates
    into keep masks; :func:`fsrf.missing.apply_keep` then zero-fills the dropped
    frames. Every implementation guarantees:

    * **Shapes and devices.** One (B, T_m) bool mask per modality of ``valid``, in
      modality order (text, audio, vision), on the device of ``valid``.
    * **Padding untouched.** Wherever ``valid`` is False the keep mask is True;
      only real positions are ever dropped.
    * **Explicit randomness.** Every draw comes from ``generator``, in a fixed
      order and a fixed amount that depends only on the shapes, never from
      torch's or numpy's global RNG. With a CPU generator the masks are built on
      the CPU and then moved, so they do not depend on the device; a generator
      on valid's device (a CUDA generator) draws them there, with that device's
      random stream (:meth:`draw`, the trainer's path on a GPU).
    * **Purity.** The result is a function of ``(valid, rates, generator
      state)``: the same state gives the same masks; the generator advances, so
      two consecutive calls give two different views.
    * **Independence.** Modalities draw separately, so two modalities with the
      same validity masks do not get the same drop positions (LNLN reseeded one
      noise matrix per call, giving MOSEI audio and vision identical masks).
    * **Rate 0 drops nothing** for that sample and modality.

    Attributes:
        name: the registry name (``build_simulator(name)``).
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def sample(
        self,
        valid: Mapping[str, torch.Tensor],
        rates: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Draw the keep masks of one incomplete view.

        Args:
            valid: modality -> (B, T_m) bool, True at real positions; exactly the
                modalities text, audio, vision, all on one device.
            rates: (B, 3) float in [0, 1], one column per modality in
                :data:`fsrf.MODALITIES` order: the per-sample, per-modality
                missing rate.
            generator: the only source of randomness: a CPU generator, or one on
                valid's device (the masks are then drawn there).

        Returns:
            modality -> (B, T_m) bool keep masks on valid's device: True = kept;
            padding positions are always True.

        Raises:
            FSRFError: malformed ``valid``, ``rates`` out of [0, 1] or of the
                wrong shape, or a generator neither on the CPU nor on valid's device.
        """

    def draw(
        self,
        valid: Mapping[str, torch.Tensor],
        rates: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """:meth:`sample` without its argument checks, on the generator's device.

        The trainer's step loop calls this: checking ``rates`` reads values back to
        the host, which would stall a GPU once per batch. The arguments must already
        be what :meth:`sample` checks for.

        Args:
            valid: modality -> (B, T_m) bool, in modality order, on the generator's device.
            rates: (B, 3) float64 in [0, 1], on the generator's device.
            generator: a CPU or device generator.

        Returns:
            The masks :meth:`sample` gives for the same arguments, on the generator's device.
            The default calls :meth:`sample` (a simulator without a fast path stays correct).
        """
        return self.sample(valid, rates, generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
