// Tests of src-csharp/KFlow.Hosting/PostgresColumns.cs and PostgresFlowExtensions.cs: properties map
// to columns by name, overridable, checked at Build().
using System;
using System.Collections.Generic;
using System.ComponentModel.DataAnnotations.Schema;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;

namespace KFlowHostingTests;

internal static class PostgresColumnsTests
{
    public sealed record Order(string Key, long CustomerId, [property: Column("total_eur")] decimal Total, [property: NotMapped] string Note);

    public sealed class Poco
    {
        public string Id { get; set; } = "";
        public string HTTPStatus { get; set; } = "";
        public int Version2 { get; set; }
    }

    public static readonly Test Tests = Runner.TestList("PostgresColumns", new[]
    {
        Runner.TestCase("properties map to snake_case columns in declaration order", () =>
            Expect.SequenceEqual(PostgresColumns.Of<Poco>(), new[] { "id", "http_status", "version2" }, "columns of Poco")),
        Runner.TestCase("Column renames a property and NotMapped leaves one out", () =>
            Expect.SequenceEqual(PostgresColumns.Of<Order>(), new[] { "key", "customer_id", "total_eur" }, "columns of Order")),
        Runner.TestCase("the row mapper reads the values in column order", () =>
        {
            var row = PostgresColumns.Row<Order>()(new Order("k", 7, 1.5m, "n"));
            Expect.SequenceEqual(row, new object?[] { "k", 7L, 1.5m }, "values of the row");
        }),
        Runner.TestCase("ToPostgres reports a key that is not a column, naming the columns", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("t", "g")
                .Map(m => new Order(m.Key, 1, 1m, ""))
                .Aggregate(Batch.OfMessages(10))
                .ToPostgres("orders", "id").Build(), "Build fails");
            Expect.Contains(e.Message, "key column 'id' is not among the columns written (key, customer_id, total_eur)", "the message");
        }),
        Runner.TestCase("ToPostgres reports a table without keys", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("t", "g")
                .Map(m => new Order(m.Key, 1, 1m, ""))
                .Aggregate(Batch.OfMessages(10))
                .ToPostgres("orders").Build(), "Build fails");
            Expect.Contains(e.Message, "needs at least one key column", "the message");
        }),
        Runner.TestCase("ToPostgres accepts a subset of the columns when they include the keys", () =>
        {
            var table = PostgresTable.Named("orders", "key") with { Columns = new List<string> { "key", "total_eur" } };
            var workflow = Workflow.FromKafka("t", "g")
                .Map(m => new Order(m.Key, 1, 1m, ""))
                .Aggregate(Batch.OfMessages(10))
                .ToPostgres(table).Build();
            Expect.Contains(workflow.Describe(), "postgres:orders", "the sink is named after its table");
        }),
    });
}
