// The seed's example workflow on the C# facade: JSON {key, foo, bar, baz} from example_topic, parsed
// with the Kafka key attached, demuxed by key, batched by 100, upserted into my_table by key.
using System.Text.Json;
using KFlow.Hosting;

namespace KFlowDemo;

/// <summary>One event of example_topic, and one row of my_table (key, foo, bar, baz).</summary>
/// <param name="Key">The Kafka message key (the row's primary key).</param>
/// <param name="Foo">A number (bigint).</param>
/// <param name="Bar">A text (text).</param>
/// <param name="Baz">A measurement (double precision).</param>
public sealed record Event(string Key, long Foo, string Bar, double Baz);

/// <summary>The example workflow.</summary>
public static class ExampleWorkflow
{
    /// <summary>The topic read.</summary>
    public const string Topic = "example_topic";

    /// <summary>The consumer group.</summary>
    public const string GroupId = "example_consumer_group_id";

    /// <summary>The table written.</summary>
    public const string Table = "my_table";

    /// <summary>my_table's definition (created when missing).</summary>
    public const string CreateTable =
        "CREATE TABLE IF NOT EXISTS my_table (key text PRIMARY KEY, foo bigint NOT NULL, bar text, baz double precision)";

    /// <summary>The workflow, built and checked.</summary>
    public static KFlowWorkflow Build()
    {
        //[example-workflow]
        var json = new JsonSerializerOptions(JsonSerializerDefaults.Web);
        return Workflow.FromKafka("example_topic", "example_consumer_group_id")
            .Map(m => JsonSerializer.Deserialize<Event>(m.Value, json)! with { Key = m.Key })
            .Demux(e => e.Key)
            .Aggregate(Batch.OfMessages(100))
            .ToPostgres("my_table", "key")
            .Build();
        //[/example-workflow]
    }
}
