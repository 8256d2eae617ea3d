// A pipeline that ends in a sink, with the workflow's own settings; Build() checks everything and
// names the setting to fix.
using System;
using System.Collections.Immutable;
using System.Linq;
using System.Threading.Tasks;
using KFlow.Kafka;

namespace KFlow.Hosting;

/// <summary>A complete pipeline (source, stages, sink) and its workflow settings. Immutable: change a
/// setting with <c>with { … }</c> or a <c>With…</c> method; <see cref="Build"/> checks them.</summary>
public sealed record WorkflowBuilder
{
    internal WorkflowBuilder(
        string topic,
        string groupId,
        ImmutableList<string> problems,
        string outline,
        Func<RunContext, Task<Pipe<byte[], Sunk>>> start)
    {
        Outline = outline;
        Topic = topic;
        GroupId = groupId;
        Problems = problems;
        Start = start;
    }

    /// <summary>The Kafka topic consumed.</summary>
    public string Topic { get; init; }

    /// <summary>The consumer group (group.id).</summary>
    public string GroupId { get; init; }

    /// <summary>The workflow's name, in logs and as the consumer's client.id. Default: the group id.</summary>
    public string? Name { get; init; }

    internal ImmutableList<string> Problems { get; init; }

    internal Func<RunContext, Task<Pipe<byte[], Sunk>>> Start { get; init; }

    internal string Outline { get; init; }

    /// <summary>What a failure of any stage without a policy of its own does. Default null:
    /// <see cref="FailurePolicy.RestartAndReplay"/> (1 s doubling to 30 s), or
    /// <see cref="FailurePolicy.Halt"/> when KafkaSettings.HaltOnFailure is true; a policy set here
    /// wins over HaltOnFailure.</summary>
    public FailurePolicy? Policy { get; init; }

    /// <summary>The policies of single stages by name ("map", "filter", "mfd", "mapAsync", a sink's
    /// name such as "postgres:my_table" or "kafka:topic", a Stateful or Scan stage's name; see
    /// <see cref="KFlowWorkflow.Describe"/>). Default none.</summary>
    public ImmutableDictionary<string, FailurePolicy> StagePolicies { get; init; } =
        ImmutableDictionary<string, FailurePolicy>.Empty.WithComparers(StringComparer.Ordinal);

    /// <summary>This workflow with another name.</summary>
    public WorkflowBuilder WithName(string name) => this with { Name = name };

    /// <summary>This workflow with <paramref name="policy"/> for every stage without a policy of its
    /// own (see <see cref="Policy"/>). Setting it twice is refused at <see cref="Build"/>.</summary>
    public WorkflowBuilder OnFailure(FailurePolicy policy)
    {
        ArgumentNullException.ThrowIfNull(policy);
        return Policy is null
            ? this with { Policy = policy }
            : this with { Problems = Problems.Add("OnFailure: the workflow's policy is set twice; set it once.") };
    }

    /// <summary>This workflow with <paramref name="policy"/> for the stage(s) named
    /// <paramref name="stage"/> (see <see cref="StagePolicies"/>), e.g.
    /// <c>.OnFailure("map", FailurePolicy.DeadLetter("orders-dlq"))</c>. Setting one stage twice is
    /// refused at <see cref="Build"/>.</summary>
    public WorkflowBuilder OnFailure(string stage, FailurePolicy policy)
    {
        ArgumentNullException.ThrowIfNull(policy);
        if (string.IsNullOrWhiteSpace(stage))
            return this with { Problems = Problems.Add("OnFailure: the stage name must not be empty.") };
        return StagePolicies.ContainsKey(stage)
            ? this with { Problems = Problems.Add($"OnFailure: the policy of stage '{stage}' is set twice; set it once.") }
            : this with { StagePolicies = StagePolicies.Add(stage, policy) };
    }

    /// <summary>Checks the pipeline and its settings and returns the runnable workflow.</summary>
    /// <exception cref="ArgumentException">A setting is missing or invalid; the message names it.</exception>
    public KFlowWorkflow Build()
    {
        var problems = Problems;
        if (string.IsNullOrWhiteSpace(Topic))
            problems = problems.Insert(0, "Workflow.FromKafka: topic must not be empty; name the Kafka topic to consume.");
        if (string.IsNullOrWhiteSpace(GroupId))
            problems = problems.Insert(0, "Workflow.FromKafka: groupId must not be empty; set the consumer group (group.id).");
        if (Name is not null && string.IsNullOrWhiteSpace(Name))
            problems = problems.Add("WithName: the name must not be blank; leave it unset to use the group id.");
        if (Policy?.Problem is { } policyProblem)
            problems = problems.Add("OnFailure: " + policyProblem);
        foreach (var (stage, policy) in StagePolicies)
            if (policy.Problem is { } stageProblem)
                problems = problems.Add($"OnFailure('{stage}'): " + stageProblem);
        var name = Name ?? GroupId;
        if (!problems.IsEmpty)
            throw new ArgumentException(
                $"Workflow '{name}' is not valid: " + string.Join(" ", problems.Distinct()));
        return new KFlowWorkflow(name, Topic, GroupId, Outline, Start, Policy, StagePolicies);
    }
}
