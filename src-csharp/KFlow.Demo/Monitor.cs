// Reads the group's committed offsets and the topic's end offsets, for the progress and the check,
// with a consumer that never joins the group (it only asks the group coordinator).
using System;
using System.Linq;
using Confluent.Kafka;

namespace KFlowDemo;

internal sealed class Monitor : IDisposable
{
    private readonly IConsumer<byte[], byte[]> _consumer;
    private readonly TopicPartition[] _partitions;

    public Monitor(string bootstrap, int partitions)
    {
        _consumer = new ConsumerBuilder<byte[], byte[]>(new ConsumerConfig
        {
            BootstrapServers = bootstrap,
            GroupId = ExampleWorkflow.GroupId,
            EnableAutoCommit = false,
        }).Build();
        _partitions = Enumerable.Range(0, partitions)
            .Select(p => new TopicPartition(ExampleWorkflow.Topic, new Partition(p))).ToArray();
    }

    /// <summary>The committed offset of each partition (0 when none).</summary>
    public long[] Committed()
    {
        try
        {
            var committed = _consumer.Committed(_partitions, TimeSpan.FromSeconds(5));
            return _partitions.Select(tp =>
                committed.FirstOrDefault(c => c.Partition == tp.Partition)?.Offset.Value is { } o && o >= 0 ? o : 0L).ToArray();
        }
        catch (KafkaException)
        {
            return new long[_partitions.Length];
        }
    }

    /// <summary>The end offset (high watermark) of each partition.</summary>
    public long[] EndOffsets() =>
        _partitions.Select(tp => _consumer.QueryWatermarkOffsets(tp, TimeSpan.FromSeconds(5)).High.Value).ToArray();

    public void Dispose()
    {
        _consumer.Close();
        _consumer.Dispose();
    }
}
