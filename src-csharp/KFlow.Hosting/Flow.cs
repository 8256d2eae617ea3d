// The fluent, immutable pipeline builder: each call returns a new Flow, so a half-built pipeline can
// be shared and forked. Stages are recorded as a function building the F# pipe through PipeCore.
using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.Threading;
using System.Threading.Tasks;
using KFlow.Kafka;

namespace KFlow.Hosting;

/// <summary>A pipeline from a Kafka topic to values of type <typeparamref name="T"/>, not yet ending
/// in a sink. Immutable: every method returns a new <see cref="Flow{T}"/>; end it with
/// <see cref="To"/> or <c>ToPostgres</c>, then <c>Build()</c>.</summary>
/// <remarks>User callbacks run on the partition loops (thread-pool threads): one call at a time per
/// partition, or per key after <see cref="Demux"/>; different partitions and keys run concurrently.
/// A callback that throws does not skip the message: by default the workflow restarts from the last
/// committed offset after a backoff and reads the message again.</remarks>
/// <typeparam name="T">The values flowing out of the last stage.</typeparam>
public sealed record Flow<T>
{
    internal Flow(string topic, string groupId, Func<RunContext, Pipe<byte[], T>> pipe, ImmutableList<string> problems)
    {
        Topic = topic;
        GroupId = groupId;
        Pipe = pipe;
        Problems = problems;
    }

    /// <summary>The Kafka topic consumed.</summary>
    public string Topic { get; init; }

    /// <summary>The consumer group (group.id); instances with the same group share the partitions.</summary>
    public string GroupId { get; init; }

    internal Func<RunContext, Pipe<byte[], T>> Pipe { get; init; }

    internal ImmutableList<string> Problems { get; init; }

    private Flow<TOut> Then<TOut>(Func<Pipe<byte[], T>, RunContext, Pipe<byte[], TOut>> stage)
    {
        var before = Pipe;
        return new Flow<TOut>(Topic, GroupId, ctx => stage(before(ctx), ctx), Problems);
    }

    private Flow<T> Problem(string problem) => this with { Problems = Problems.Add(problem) };

    /// <summary>One value in, one out: <paramref name="map"/> runs on each value.</summary>
    public Flow<TOut> Map<TOut>(Func<T, TOut> map)
    {
        ArgumentNullException.ThrowIfNull(map);
        return Then((pipe, _) => PipeCore.Map(pipe, map));
    }

    /// <summary>An asynchronous map with at most <paramref name="parallelism"/> calls in flight (per
    /// partition, or per key after Demux); results keep input order. The token is cancelled when a
    /// stop has waited KafkaSettings.DrainTimeout for the calls in flight.</summary>
    /// <param name="map">The call; its Task's failure is a failure of the message (see remarks of Flow).</param>
    /// <param name="parallelism">Calls in flight at most, ≥ 1. Default 1.</param>
    public Flow<TOut> MapAsync<TOut>(Func<T, CancellationToken, Task<TOut>> map, int parallelism = 1)
    {
        ArgumentNullException.ThrowIfNull(map);
        var next = Then((pipe, ctx) =>
            PipeCore.MapAsync(pipe, Math.Max(1, parallelism), new Func<T, Task<TOut>>(v => map(v, ctx.Stopping))));
        return parallelism < 1
            ? next with { Problems = next.Problems.Add($"MapAsync: parallelism must be ≥ 1 (got {parallelism}).") }
            : next;
    }

    /// <summary>Keeps the values for which <paramref name="predicate"/> is true; a dropped value counts
    /// as processed (its offset can be committed).</summary>
    public Flow<T> Filter(Func<T, bool> predicate)
    {
        ArgumentNullException.ThrowIfNull(predicate);
        return Then((pipe, _) => PipeCore.Filter(pipe, predicate));
    }

    /// <summary>One value in, zero or more out; the input counts as processed when all of its outputs
    /// are (none: at once).</summary>
    public Flow<TOut> Unfold<TOut>(Func<T, IEnumerable<TOut>> unfold)
    {
        ArgumentNullException.ThrowIfNull(unfold);
        return Then((pipe, _) => PipeCore.Unfold(pipe, unfold));
    }

    /// <summary>A custom stateful stage that holds no values: for each value, <paramref name="step"/>
    /// gets the current state and returns the next state and the values to emit in its place. The
    /// state is per partition (per key after Demux) and starts again from <paramref name="initial"/>
    /// after a restart, a rebalance or an idle substream's eviction.</summary>
    /// <param name="name">The stage's name, in logs and failures.</param>
    /// <param name="initial">The initial state.</param>
    /// <param name="step">(state, value) → (next state, values emitted; empty drops the value).</param>
    public Flow<TOut> Scan<TState, TOut>(
        string name,
        TState initial,
        Func<TState, T, (TState State, IReadOnlyList<TOut> Emit)> step)
    {
        ArgumentNullException.ThrowIfNull(step);
        var next = Then((pipe, _) => PipeCore.Scan(pipe, string.IsNullOrWhiteSpace(name) ? "scan" : name, initial,
            new Func<TState, T, KeyValuePair<TState, IReadOnlyList<TOut>>>((s, v) =>
            {
                var (state, emit) = step(s, v);
                return new KeyValuePair<TState, IReadOnlyList<TOut>>(state, emit);
            })));
        return string.IsNullOrWhiteSpace(name)
            ? next with { Problems = next.Problems.Add("Scan: name must not be empty; name the stage.") }
            : next;
    }

    /// <summary>Splits the stream by <paramref name="key"/> into substreams (virtual partitions) that
    /// run concurrently while keeping per-key order; the stages after it run per key until
    /// <see cref="Join"/> or the sink (KFlow's split). Idle substreams are dropped after 60 s.</summary>
    public Flow<T> Demux(Func<T, string> key)
    {
        ArgumentNullException.ThrowIfNull(key);
        return Then((pipe, _) => PipeCore.Split(pipe, key));
    }

    /// <summary>Splits the stream by the Kafka message key ("" for a null key), or by the key an
    /// earlier <see cref="Mfd{TOut}"/> set, as <see cref="Demux(Func{T, string})"/> does by a key
    /// function: the stages after it run per key until <see cref="Join"/> or the sink.</summary>
    public Flow<T> DemuxByKey() => Then((pipe, _) => PipeCore.SplitByKey(pipe));

    /// <summary>Splits the stream by <paramref name="key"/>, runs the stages that
    /// <paramref name="perKey"/> appends on each key's substream, and merges the substreams back:
    /// <c>Demux(key, s => s.Map(f))</c> is <c>Demux(key).Map(f).Join()</c>.</summary>
    /// <param name="key">The substream key of a value.</param>
    /// <param name="perKey">Appends the per-key stages to the flow it receives (called once, at the
    /// call, not per key); it must not call <see cref="Join"/> more often than <see cref="Demux(Func{T, string})"/>.</param>
    public Flow<TOut> Demux<TOut>(Func<T, string> key, Func<Flow<T>, Flow<TOut>> perKey)
    {
        ArgumentNullException.ThrowIfNull(perKey);
        return perKey(Demux(key)).Join();
    }

    /// <summary>Map + filter + demux in one step (KFlow's mfd): <paramref name="f"/> returns null to
    /// drop a value (it counts as processed) or (key, value) to send the value to the substream of that
    /// key. The stages after it run per key until <see cref="Join"/> or the sink; a later
    /// <see cref="DemuxByKey"/> sees the key. The stage is named "mfd" (for
    /// <see cref="WorkflowBuilder.OnFailure(string, FailurePolicy)"/>). C# cannot infer
    /// <typeparamref name="TOut"/> from a lambda returning null in one branch: write
    /// <c>.Mfd&lt;Order&gt;(m => … ? (key, order) : null)</c>.</summary>
    public Flow<TOut> Mfd<TOut>(Func<T, (string Key, TOut Value)?> f)
    {
        ArgumentNullException.ThrowIfNull(f);
        return Then((pipe, _) => PipeCore.Mfd(pipe, new Func<T, ValueTuple<bool, string, TOut>>(v =>
            f(v) is { } kept ? (true, kept.Key ?? "", kept.Value) : (false, "", default!))));
    }

    /// <summary>Like <see cref="Demux{TOut}(Func{T, string}, Func{Flow{T}, Flow{TOut}})"/>, but each
    /// key gets its own stages: on a key's first message (after a restart, a rebalance or an idle
    /// eviction: again), <paramref name="route"/> receives the key and an empty flow and appends that
    /// key's stages. The substreams are merged back after it. The route runs on the partition loop; an
    /// exception in it, or an invalid stage it builds, is a failure of that message in the stage named
    /// "routeDependent" (see remarks of Flow).</summary>
    public Flow<TOut> RouteDependent<TOut>(Func<T, string> key, Func<string, Flow<T>, Flow<TOut>> route)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(route);
        return Then((pipe, ctx) => PipeCore.RouteDependent(pipe, key,
            new Func<string, Pipe<byte[], T>, Pipe<byte[], TOut>>((k, empty) =>
            {
                var routed = route(k, new Flow<T>(Topic, GroupId, _ => empty, ImmutableList<string>.Empty));
                if (!routed.Problems.IsEmpty)
                    throw new ArgumentException($"RouteDependent: the stages of key '{k}' are not valid: " +
                                                string.Join(" ", routed.Problems));
                return routed.Pipe(ctx);
            })));
    }

    /// <summary>Assembles objects split across several messages: <paramref name="chunkOf"/> reads a
    /// value's chunk (object id, index, count, part); once every chunk of an object has arrived,
    /// <paramref name="combine"/> receives the parts in index order and its result stands for all the
    /// chunks (their offsets count as processed when it is). A repeated chunk is dropped. An incomplete
    /// object is dropped on revoke and shutdown without finishing its chunks, so they are read again
    /// after a restart. The chunks of an object must come from one partition (one Kafka key). A chunk
    /// whose index is out of range is a failure of its message. The stage is named "assembleChunks".</summary>
    public Flow<TOut> AssembleChunks<TPart, TOut>(
        Func<T, Chunk<TPart>> chunkOf,
        Func<IReadOnlyList<TPart>, TOut> combine)
    {
        ArgumentNullException.ThrowIfNull(chunkOf);
        ArgumentNullException.ThrowIfNull(combine);
        return Then((pipe, _) => PipeCore.AssembleChunks(pipe,
            new Func<T, ValueTuple<string, int, int, TPart>>(v =>
            {
                var c = chunkOf(v) ?? throw new ArgumentException("AssembleChunks: chunkOf returned null.");
                return (c.Id, c.Index, c.Count, c.Part);
            }),
            combine));
    }

    /// <summary>A custom stage that holds values in its own state (KFlow's aggregate behaviour): each
    /// value goes to <paramref name="add"/>, which returns the next state and the values to emit. What
    /// is emitted stands for every value added since the previous emission (their offsets count as
    /// processed when all emitted values are); emitting nothing keeps the values held (not committed).
    /// The state is per partition (per key after Demux) and starts again from
    /// <paramref name="initial"/> after a restart, a rebalance, a flush or an idle eviction.</summary>
    /// <param name="name">The stage's name, in logs, failures and
    /// <see cref="WorkflowBuilder.OnFailure(string, FailurePolicy)"/>.</param>
    /// <param name="initial">The empty state; also the state after a flush. Treat states as
    /// immutable: return a new one rather than changing the one received.</param>
    /// <param name="add">(state, value) → (next state, values to emit).</param>
    /// <param name="flush">On revoke and shutdown (and when stalled intake forces a flush): the values
    /// to emit for what is held. Default null: nothing, and the held values count as processed
    /// without output.</param>
    /// <param name="tick">On the workflow's 1 s tick: (state, now) → (next state, values to emit), e.g.
    /// to emit what has waited too long. Default null: nothing happens on ticks. Values emitted while
    /// nothing is held are discarded.</param>
    public Flow<TOut> Stateful<TState, TOut>(
        string name,
        TState initial,
        Func<TState, T, (TState State, IReadOnlyList<TOut> Emit)> add,
        Func<TState, IReadOnlyList<TOut>>? flush = null,
        Func<TState, DateTimeOffset, (TState State, IReadOnlyList<TOut> Emit)>? tick = null)
    {
        ArgumentNullException.ThrowIfNull(add);
        static KeyValuePair<TState, IReadOnlyList<TOut>> Pair((TState State, IReadOnlyList<TOut> Emit) step) =>
            new(step.State, step.Emit);
        var next = Then((pipe, _) => PipeCore.Stateful(pipe, string.IsNullOrWhiteSpace(name) ? "stateful" : name,
            initial,
            new Func<TState, T, KeyValuePair<TState, IReadOnlyList<TOut>>>((s, v) => Pair(add(s, v))),
            tick is null ? null! : new Func<TState, DateTimeOffset, KeyValuePair<TState, IReadOnlyList<TOut>>>((s, now) => Pair(tick(s, now))),
            flush is null ? null! : new Func<TState, IReadOnlyList<TOut>>(flush)));
        return string.IsNullOrWhiteSpace(name)
            ? next with { Problems = next.Problems.Add("Stateful: name must not be empty; name the stage.") }
            : next;
    }

    /// <summary>Merges the substreams of the innermost <see cref="Demux(Func{T, string})"/> (or
    /// <see cref="DemuxByKey"/>, <see cref="Mfd{TOut}"/>) back into one stream.</summary>
    public Flow<T> Join() => Then((pipe, _) => PipeCore.Join(pipe));

    /// <summary>Collects values into batches (see <see cref="Batch"/>); a batch is also emitted on
    /// revoke and shutdown. Its messages count as processed when the batch is.</summary>
    public Flow<IReadOnlyList<T>> Aggregate(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var next = Then((pipe, _) =>
            PipeCore.Aggregate(pipe, batch.MaxMessages ?? (int?)null, batch.MaxAge ?? (TimeSpan?)null));
        return batch.Problem() is { } problem
            ? next with { Problems = next.Problems.Add(problem) }
            : next;
    }

    /// <summary>Ends the pipeline in a sink named <paramref name="name"/>: <paramref name="write"/>
    /// receives each value (a batch after Aggregate); the messages it stands for count as processed
    /// when its Task succeeds. A failed Task is a failure (see remarks of Flow), so writes must be
    /// idempotent: after a restart a value may be written again.</summary>
    public WorkflowBuilder To(string name, Func<T, CancellationToken, Task> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        var flow = string.IsNullOrWhiteSpace(name) ? Problem("To: name must not be empty; name the sink.") : this;
        return flow.End(name ?? "sink", _ => Task.FromResult<Func<T, Task>>(v => write(v, _.Stopping)));
    }

    /// <summary>Ends the pipeline in a Kafka sink: each value becomes one message of
    /// <paramref name="topic"/> with the key and value given by <paramref name="key"/> and
    /// <paramref name="value"/> (Confluent's serializers for their types: string, byte[], int, long,
    /// ...). The producer is idempotent and uses KafkaSettings.BootstrapServers and
    /// KafkaSettings.ProducerProperties; a value counts as processed when its delivery report
    /// succeeds. After a failure and replay a message may be written twice (at least once).</summary>
    public WorkflowBuilder ToKafka<TKey, TValue>(string topic, Func<T, TKey> key, Func<T, TValue> value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        var flow = string.IsNullOrWhiteSpace(topic) ? Problem("ToKafka: topic must not be empty; name the topic to write to.") : this;
        return flow.End("kafka:" + topic, ctx =>
        {
            var sink = KafkaSinkCore.Create(ctx.Options.Kafka.BootstrapServers!, topic, key, value,
                ctx.Options.Kafka.ProducerProperties);
            ctx.Resources.Add(new Disposing(sink));
            return Task.FromResult<Func<T, Task>>(v => KafkaSinkCore.WriteAsync(sink, new[] { v }));
        });
    }

    private sealed class Disposing(IDisposable resource) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            resource.Dispose();
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>Ends the pipeline in a sink whose writer is created when the workflow starts.</summary>
    internal WorkflowBuilder End(string sinkName, Func<RunContext, Task<Func<T, Task>>> createWriter) =>
        EndWith(sinkName, async ctx =>
        {
            var write = await createWriter(ctx).ConfigureAwait(false);
            return pipe => PipeCore.Sink(pipe, sinkName, new Func<T, Task>(async value =>
            {
                await write(value).ConfigureAwait(false);
                ctx.AddWritten(value is System.Collections.ICollection batch ? batch.Count : 1);
            }));
        });

    /// <summary>Ends the pipeline in a sink stage made when the workflow starts: <paramref name="createSink"/>
    /// returns the function that appends it to the pipe (an exactly-once sink carries its store in the
    /// pipe, so it is more than a write function).</summary>
    internal WorkflowBuilder EndWith(
        string sinkName,
        Func<RunContext, Task<Func<Pipe<byte[], T>, Pipe<byte[], Sunk>>>> createSink)
    {
        var pipe = Pipe;
        var problems = Problems;
        var outline = "";
        try
        {
            // Stages that check their arguments (Join, Aggregate) fail here; the outline uses a no-op sink.
            outline = PipeCore.Describe(PipeCore.Sink(pipe(RunContext.DryRun()), sinkName,
                new Func<T, Task>(_ => Task.CompletedTask)));
        }
        catch (ArgumentException e)
        {
            problems = problems.Add(e.Message);
        }

        return new WorkflowBuilder(Topic, GroupId, problems, outline, async ctx =>
        {
            var sink = await createSink(ctx).ConfigureAwait(false);
            return sink(pipe(ctx));
        });
    }
}
