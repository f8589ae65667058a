"""Meta re-weighting: non-negative weights summing to 1, equal to the gradient-alignment formula,
and lower weights for flipped pseudo-labels."""

import torch
from torch import nn

from peftkit.objectives.meta_weights import meta_weights


def blobs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    points = torch.randn(count, 4, generator=generator) + (labels[:, None] * 2 - 1) * 1.5
    return points, labels


def losses_of(points, labels):
    return lambda model: nn.functional.cross_entropy(model(points), labels, reduction="none")


def test_weights_are_non_negative_sum_to_one_and_equal_the_alignment_formula():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    points, labels = blobs(12, 1)
    labelled_points, labelled_labels = blobs(8, 2)
    labelled = lambda m: nn.functional.cross_entropy(m(labelled_points), labelled_labels)  # noqa: E731
    weights = meta_weights(model, losses_of(points, labels), labelled, step_size=0.5)
    assert (weights >= 0).all() and abs(weights.sum().item() - 1) <= 1e-6
    # by hand: max(∇L_labelled · ∇ℓᵢ, 0), normalised
    params = list(model.parameters())
    labelled_grad = torch.cat([g.flatten() for g in torch.autograd.grad(labelled(model), params)])
    alignment = []
    for i in range(len(labels)):
        loss = nn.functional.cross_entropy(model(points[i:i + 1]), labels[i:i + 1])
        alignment.append(torch.dot(labelled_grad, torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])))
    expected = torch.clamp(torch.stack(alignment), min=0)
    assert torch.allclose(weights, expected / expected.sum(), atol=1e-5)


def test_flipped_pseudo_labels_get_lower_weight_than_correct_ones():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    with torch.no_grad():  # a model that is already roughly right, as a teacher-trained student is
        model.weight.copy_(torch.tensor([[-0.3, -0.3, -0.3, -0.3], [0.3, 0.3, 0.3, 0.3]]))
        model.bias.zero_()
    points, labels = blobs(200, 3)
    flipped = torch.rand(200, generator=torch.Generator().manual_seed(4)) < 0.3
    pseudo = torch.where(flipped, 1 - labels, labels)
    labelled_points, labelled_labels = blobs(32, 5)
    weights = meta_weights(model, losses_of(points, pseudo),
                           lambda m: nn.functional.cross_entropy(m(labelled_points), labelled_labels))
    assert weights[flipped].mean() < 0.5 * weights[~flipped].mean()
    assert (weights[flipped] == 0).float().mean() > 0.8  # most flipped examples get no weight at all


def test_all_disagreeing_examples_give_all_zero_weights():
    model = nn.Linear(4, 2)
    points, labels = blobs(6, 6)
    weights = meta_weights(model, lambda m: -losses_of(points, labels)(m),  # pushes the wrong way
                           lambda m: nn.functional.cross_entropy(m(points), labels))
    assert torch.equal(weights, torch.zeros(6))
